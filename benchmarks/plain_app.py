"""A minimal plain Celery app, run as its users run it: the default-settings baseline.

`bench_execution.py` and `smoke.py` start its worker as a separate process,

    BENCH_PLAIN_REDIS_URL=redis://127.0.0.1:PORT/0 \\
        python -m celery -A benchmarks.plain_app worker --concurrency 2 --hostname plain-bench@%h

with the repository root on PYTHONPATH. Nothing is configured beyond the broker and the result
backend (the same Redis), so Celery's defaults hold: prefork pool, prefetch multiplier 4, early
acknowledgement (acks_late False), no task events, JSON serializer, results stored (every task
below is a plain `@app.task`, so it stores its return value, as users' tasks do), default queue
`celery` (the Chordflow worker serves `cpu`, so neither worker takes the other's messages).

The benchmark sends these tasks by name (`make_app(url).signature("plain.noop")`).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import redis
from celery import Celery

URL_ENV = "BENCH_PLAIN_REDIS_URL"


def make_app(url: str) -> Celery:
    """The app, with nothing but its broker and result backend set: both are `url`."""
    return Celery("plain", broker=url, backend=url, set_as_current=False)


app = make_app(os.environ.get(URL_ENV, "redis://127.0.0.1:6379/0"))
_clients: dict[int, redis.Redis] = {}


def _redis() -> redis.Redis:
    """One connection per pool process (built after the fork)."""
    client = _clients.get(os.getpid())
    if client is None:
        client = _clients[os.getpid()] = redis.Redis.from_url(os.environ[URL_ENV])
    return client


@app.task(name="plain.noop")
def noop(*_: Any) -> None:
    """Do nothing (chain links)."""


@app.task(name="plain.noop_result")
def noop_result(value: Any = None) -> Any:
    """Return the value (a chord's header tasks)."""
    return value


@app.task(name="plain.push")
def push(key: str, value: str = "done") -> None:
    """RPUSH `value` to `key`: the end signal the benchmark BLPOPs, a DAG node's 'I am done'."""
    _redis().rpush(key, value)


@app.task(name="plain.sleep_push")
def sleep_push(seconds: float, key: str, value: str = "done") -> None:
    """Sleep `seconds`, then RPUSH `value` to `key` (a node of the skewed DAG)."""
    time.sleep(seconds)
    _redis().rpush(key, value)


@app.task(name="plain.modules")
def modules() -> dict[str, Any]:
    """This pool process's pid and the modules it has imported (`bench_memory.py`)."""
    return {"pid": os.getpid(), "modules": sorted(sys.modules)}
