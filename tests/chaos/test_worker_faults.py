"""Workers that die, freeze or keep crashing: every stage still commits exactly once."""

from __future__ import annotations

import os
import signal
import time

from orchestration.language.validation import validate_data
from tests.integration.conftest import pipeline, wait_until

from .conftest import FAST_LEASES


def _host_of_first_start(cluster, run_id: str, stage_id: str) -> str:
    return wait_until(lambda: cluster.redis.lindex(f"test:hosts:{run_id}:{stage_id}", 0), timeout=30)


def _two_workers(cluster) -> dict:
    """host-a and host-b, one process each, with 3 s leases; returned by name once both serve."""
    workers = {
        name: cluster.start_worker(hostname=name, concurrency=1, env=FAST_LEASES, wait=False)
        for name in ("host-a", "host-b")
    }
    cluster.wait_workers(hostnames=list(workers))
    return workers


def test_sigkilled_worker_mid_stage_is_rerun_elsewhere_within_the_lease(chaos_cluster):
    cluster = chaos_cluster
    workers = _two_workers(cluster)
    handle = cluster.client.submit(
        validate_data(
            pipeline(
                "kill",
                {"id": "work", "uses": "test.slow_counted", "params": {"seconds": 3}},
                {"id": "after", "uses": "test.record", "needs": ["work"]},
            )
        )
    )
    victim = _host_of_first_start(cluster, handle.run_id, "work")
    killed_at = time.monotonic()
    workers[victim].kill()
    result = handle.wait(timeout=60)
    assert result.status == "succeeded"
    survivor = "host-b" if victim == "host-a" else "host-a"
    assert result.outputs["work"] == survivor
    assert result.stage_results["work"]["host"] == survivor
    assert cluster.count(handle.run_id, "work") == 2  # started twice...
    assert result.metrics == {"done": 1}  # ...committed once
    assert cluster.count(handle.run_id, "after") == 1
    assert result.stage_results["work"]["attempts"] == 2
    assert time.monotonic() - killed_at < 30  # seconds, not the broker's one-hour visibility timeout


def test_a_stage_that_kills_its_worker_every_time_is_quarantined(chaos_cluster):
    cluster = chaos_cluster
    cluster.start_worker(hostname="host-a", concurrency=1, env=FAST_LEASES)
    result = cluster.run(pipeline("poison", {"id": "bomb", "uses": "test.suicide"}), timeout=90)
    assert result.status == "failed"
    error = result.stage_results["bomb"]["error"]
    assert error["type"] == "PoisonMessage"
    assert "quarantined" in error["message"]
    assert cluster.count(result.run_id, "bomb") == int(FAST_LEASES["CHORDFLOW_MAX_DELIVERIES"])


def test_frozen_worker_late_commit_is_refused(chaos_cluster):
    cluster = chaos_cluster
    workers = _two_workers(cluster)
    handle = cluster.client.submit(
        validate_data(
            pipeline("freeze", {"id": "work", "uses": "test.slow_counted", "params": {"seconds": 4}})
        )
    )
    frozen = _host_of_first_start(cluster, handle.run_id, "work")
    pgid = workers[frozen].proc.pid
    os.killpg(pgid, signal.SIGSTOP)
    try:
        result = handle.wait(timeout=60)  # the other worker takes over after the lease lapses
    finally:
        os.killpg(pgid, signal.SIGCONT)
    time.sleep(3)  # the frozen worker wakes, finds its lease gone, and its commit is refused
    other = "host-b" if frozen == "host-a" else "host-a"
    assert result.status == "succeeded"
    final = cluster.client.status(handle.run_id)
    assert final["stages"]["work"]["output"] == other
    assert final["stages"]["work"]["host"] == other
    assert final["metrics"] == {"done": 1}
    assert cluster.count(handle.run_id, "work") == 2
