"""A Python hook for tests/integration/test_pipelines_triggers.py, imported by the worker that is
killed mid-delivery (`--import tests.pipelines_hooks`).

The hook sender fires a run's triggers before it runs the Python hooks of the run's end; this
hook then holds the event (the first time it sees it) long enough for the test to kill the
worker before the event is acknowledged, so another worker's sender delivers it again.
"""

from __future__ import annotations

import os
import time

import redis

from orchestration import hooks


@hooks.on_run_complete
def hold_the_first_delivery(event: dict) -> None:
    if event.get("pipeline") != "trig-slow-a":
        return
    client = redis.Redis.from_url(os.environ["CHORDFLOW_REDIS_URL"], decode_responses=True)
    if client.incr(f"test:pipelines:delivered:{event['run_id']}") == 1:
        time.sleep(float(os.environ.get("TEST_HOLD_S", "60")))
