"""Plain Celery tasks for `bench_execution.py`'s same-settings baseline.

The worker imports this module (`python -m workers --import benchmarks.plain_tasks`,
with the repository root on PYTHONPATH). `shared_task` attaches each task to every
Celery app, so these run in the same worker processes, from the same queue and the
same Redis, with the same configuration (acks late, prefetch 1, JSON, task events)
as Chordflow's own `stage.<type>` tasks.

(The default-settings baseline, plain Celery with its own worker and Celery's defaults, is
`benchmarks/plain_app.py`.)

The benchmark process sends them by name (`app.signature("bench.noop")`), so it never
needs to import this module.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import redis
from celery import shared_task

_clients: dict[int, redis.Redis] = {}


def _redis() -> redis.Redis:
    """One connection per pool process (built after the fork), to the worker's Redis."""
    client = _clients.get(os.getpid())
    if client is None:
        client = _clients[os.getpid()] = redis.Redis.from_url(os.environ["CHORDFLOW_REDIS_URL"])
    return client


@shared_task(name="bench.noop", ignore_result=True)
def noop(*_: Any) -> None:
    """Do nothing and store nothing (chain links, lattice nodes' work)."""


@shared_task(name="bench.noop_result", ignore_result=False)
def noop_result(value: Any = None) -> Any:
    """Do nothing, but store a result: a chord's header tasks must, for the join to count them."""
    return value


@shared_task(name="bench.push", ignore_result=True)
def push(key: str, value: str = "done") -> None:
    """RPUSH `value` to `key`: the end-of-run signal the benchmark BLPOPs, and a lattice node's 'I am done'."""
    _redis().rpush(key, value)


@shared_task(name="bench.sleep_push", ignore_result=True)
def sleep_push(seconds: float, key: str, value: str = "done") -> None:
    """Sleep `seconds`, then RPUSH `value` to `key` (a node of the skewed DAG)."""
    time.sleep(seconds)
    _redis().rpush(key, value)


@shared_task(name="bench.modules", ignore_result=False)
def modules() -> dict[str, Any]:
    """This pool process's pid and the modules it has imported (`bench_memory.py`)."""
    return {"pid": os.getpid(), "modules": sorted(sys.modules)}
