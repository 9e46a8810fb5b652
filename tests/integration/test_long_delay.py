"""A retry delay longer than the broker's visibility timeout runs the stage exactly once more."""

from __future__ import annotations

import time

from .conftest import pipeline


def test_long_retry_delay_outlives_the_visibility_timeout_without_duplicates(bare_cluster):
    cluster = bare_cluster
    cluster.start_worker(env={"CHORDFLOW_VISIBILITY_TIMEOUT_S": "5"}, concurrency=2)
    result = cluster.run(
        pipeline(
            "long-delay",
            {
                "id": "flaky",
                "uses": "test.timed_flaky",
                "params": {"fail_times": 1},
                "retry": {"max_attempts": 3, "backoff": "fixed", "delay": 12},
            },
        ),
        timeout=60,
    )
    assert result.status == "succeeded"
    times = [float(t) for t in cluster.redis.lrange(f"test:times:{result.run_id}:flaky", 0, -1)]
    assert len(times) == 2, times  # the first attempt and exactly one more
    assert 11 <= times[1] - times[0] <= 16
    time.sleep(6)  # past another visibility timeout: still no duplicate
    assert cluster.redis.llen(f"test:times:{result.run_id}:flaky") == 2
