"""The paths a stage can take besides a plain success, met by a chain that runs in place
(workers/execution.py): a condition that skips, a retry, a cache hit, a non-critical failure,
a cancel and a pause in the middle. Each ends as it does through the queue, every stage
commits once, and the worker lives on."""

from __future__ import annotations

import time

from orchestration.language.validation import validate_data

from .conftest import pipeline, wait_until


def _rec(sid: str, need: str | None = None, **extra) -> dict:
    return {"id": sid, "uses": "test.record", **({"needs": [need]} if need else {}), **extra}


def test_a_chain_in_place_meets_a_skip_a_retry_a_cache_hit_and_a_failure(bare_cluster):
    cluster = bare_cluster
    worker = cluster.start_worker(hostname="paths", concurrency=1)
    try:
        data = pipeline(
            "in-place-paths",
            _rec("a"),
            _rec("skipped", "a", when="variables.mode == 'never'"),
            _rec("b", "skipped"),
            {"id": "flaky", "uses": "test.flaky", "needs": ["b"], "params": {"fail_times": 1}},
            _rec("cached", "flaky", cache={"ttl": "1h"}, params={"output": 7}),
            {
                "id": "fails",
                "uses": "test.flaky",
                "needs": ["cached"],
                "critical": False,
                "params": {"fail_times": 5},
            },
            _rec("last", "fails"),
            variables={"mode": "daily"},
        )
        first = cluster.run(data, timeout=60)
        task_ids = {
            cluster.redis.hget(cluster.client.store.keys.stage(first.run_id, s), "task_id") for s in "ab"
        }
        assert len(task_ids) == 1, "a and b (through a skip) did not run in place"
        again = cluster.run(data, timeout=60)
        for result in (first, again):
            run_id = result.run_id
            assert result.status == "succeeded", result
            states = {sid: r["state"] for sid, r in result.stage_results.items()}
            assert states["skipped"] == "skipped"
            assert states["b"] == states["flaky"] == states["cached"] == states["last"] == "succeeded"
            assert states["fails"] == "failed"
            assert result.stage_results["flaky"]["attempts"] == 2
            assert result.outputs["cached"] == 7
            assert set(cluster.terminal_commits(run_id).values()) == {1}
            assert cluster.count(run_id, "skipped") == 0
            assert cluster.count(run_id, "last") == 1
        assert cluster.count(first.run_id, "cached") == 1
        assert cluster.count(again.run_id, "cached") == 0  # the second run's came from the cache
        assert worker.proc.poll() is None  # the worker lives on
    finally:
        worker.stop()


def test_a_cancel_and_a_pause_reach_a_chain_running_in_place(bare_cluster):
    cluster = bare_cluster
    worker = cluster.start_worker(hostname="stops", concurrency=1)
    client, keys = cluster.client, cluster.client.store.keys
    stages = [_rec("s0", params={"seconds": 0.1})]
    stages += [_rec(f"s{i}", f"s{i - 1}", params={"seconds": 0.1}) for i in range(1, 40)]
    try:

        def succeeded(run_id: str) -> int:
            states = cluster.redis.hvals(keys.states(run_id))
            return sum(1 for s in states if s == "succeeded")

        # a pause: what runs finishes, nothing new starts, and resume goes on to the end
        paused = client.submit(validate_data(pipeline("in-place-pause", *stages)))
        wait_until(lambda: succeeded(paused.run_id) >= 3, timeout=30)
        client.pause(paused.run_id)
        time.sleep(1.0)
        held = succeeded(paused.run_id)
        time.sleep(1.0)
        assert succeeded(paused.run_id) == held, "stages went on committing while paused"
        assert held < 40
        client.resume(paused.run_id)
        result = paused.wait(timeout=60)
        assert result.status == "succeeded"
        assert set(cluster.terminal_commits(paused.run_id).values()) == {1}
        assert all(cluster.count(paused.run_id, f"s{i}") == 1 for i in range(40))
        task_ids = {cluster.redis.hget(keys.stage(paused.run_id, f"s{i}"), "task_id") for i in range(40)}
        assert len(task_ids) < 20, "the chain did not run in place"

        # a cancel: the run ends cancelled soon, and no stage starts after it
        cancelled = client.submit(validate_data(pipeline("in-place-cancel", *stages)))
        wait_until(lambda: succeeded(cancelled.run_id) >= 3, timeout=30)
        client.cancel(cancelled.run_id)
        result = cancelled.wait(timeout=30)
        assert result.status == "cancelled"
        time.sleep(1.0)
        ran = sum(cluster.count(cancelled.run_id, f"s{i}") for i in range(40))
        assert ran < 40
        assert max(cluster.terminal_commits(cancelled.run_id).values()) == 1
        time.sleep(0.5)
        assert sum(cluster.count(cancelled.run_id, f"s{i}") for i in range(40)) == ran
        assert worker.proc.poll() is None  # the worker lives on
    finally:
        worker.stop()
