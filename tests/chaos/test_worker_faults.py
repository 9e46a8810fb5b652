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


def test_sigkilled_worker_mid_chunk_its_unbegun_items_run_elsewhere(chaos_cluster):
    # Given a fan-out of 64 items, 4 consecutive items per message (CHORDFLOW_FANOUT_CHUNK, 64 // 16)
    cluster = chaos_cluster
    workers = _two_workers(cluster)
    handle = cluster.client.submit(
        validate_data(
            pipeline(
                "kill-chunk",
                {"id": "items", "uses": "noop", "params": {"output": list(range(64))}},
                {
                    "id": "each",
                    "uses": "test.slow_counted",
                    "params": {"seconds": 0.3},
                    "for_each": "items",
                    "needs": ["items"],
                },
            )
        )
    )
    # When the worker that started the first item is SIGKILLed, with the rest of its chunk not begun
    victim = _host_of_first_start(cluster, handle.run_id, "each")
    killed_at = time.monotonic()
    workers[victim].kill()
    # Then the items it held (the one it ran, and those its message carried but it never began) run
    # on the survivor within a lease, not after the broker's one-hour visibility timeout, and every
    # item is committed exactly once
    result = handle.wait(timeout=90)
    assert result.status == "succeeded", result.stage_results
    assert time.monotonic() - killed_at < 60
    assert result.metrics == {"done": 64}
    survivor = "host-b" if victim == "host-a" else "host-a"
    assert len(result.outputs["each"]) == 64
    assert result.outputs["each"].count(survivor) >= 64 - 4
    assert cluster.count(handle.run_id, "each") <= 64 + 1  # at most the killed item ran twice
