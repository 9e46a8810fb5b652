"""Stage types for the tests of what a Python stage prints and logs (tests/integration/test_stage_prints.py)
and of the context writes a worker refuses (tests/integration/test_hostile_small.py)."""

from __future__ import annotations

import logging
import os
import sys
import time

import redis

from orchestration import stage

user_log = logging.getLogger("userland.stage")


@stage("test.prints")
def prints(ctx, lines: int = 5, every: float = 1.0) -> int:
    """print() `lines` lines, one every `every` seconds, one logging record and one stderr line."""
    user_log.warning("a logging record from the stage's own logger")
    print("to stderr", file=sys.stderr)
    for i in range(lines):
        print(f"print line {i}", flush=True)
        time.sleep(every)
    return lines


@stage("test.prints_then_raises")
def prints_then_raises(ctx) -> None:
    """print a line, then fail with a KeyError deep in a helper (a traceback of some depth)."""
    print("about to fail")

    def helper(data: dict) -> int:
        return data["count"]

    helper({})


@stage("test.floods")
def floods(ctx, lines: int = 1000, long_bytes: int = 0) -> int:
    """ctx.log `lines` lines as fast as it can (and, given `long_bytes`, one line that long)."""
    if long_bytes:
        ctx.log.info("L" * long_bytes)
    for i in range(lines):
        ctx.log.info("flood line %d", i)
    return lines


@stage("test.bad_context")
def bad_context(ctx, kind: str = "nan_value") -> str:
    """Write a context value or metric a worker must refuse: `kind` says which."""
    redis.Redis.from_url(os.environ["CHORDFLOW_REDIS_URL"]).incr(f"test:count:{ctx.run_id}:{ctx.stage_id}")
    if kind == "nan_value":
        ctx.context.set("score", {"values": [1.0, float("nan")]})
    elif kind == "inf_incr":
        ctx.context.incr("total", float("inf"))
    elif kind == "long_key":
        ctx.context.set("k" * 20_000_000, 1)
    elif kind == "long_metric":
        ctx.metrics.increment("m" * 20_000_000, 1)
    elif kind == "inf_metric":
        ctx.metrics.increment("rows", float("-inf"))
    return "written"
