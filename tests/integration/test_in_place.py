"""A commit that makes a child ready may start the child's attempt for the committing process to
run next, in place (workers/execution.py): no trip through the queue. Every stage still commits
once: a worker killed in the middle of an in-place stage leaves a lease the reaper acts on, a warm
shutdown waits at most CHORDFLOW_IN_PLACE_S for it, and the setting at 0 turns it off. A chain in
place meets the other paths a stage can take (a condition that skips, a retry, a cache hit, a
non-critical failure, a pause, a cancel) as it does through the queue."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from orchestration.language.validation import validate_data

from .conftest import pipeline, wait_until

SHORT_LEASE = {"CHORDFLOW_LEASE_S": "3", "CHORDFLOW_HEARTBEAT_S": "0.5", "CHORDFLOW_OUTBOX_GRACE_S": "2"}


def _chain(name: str, length: int, **params) -> dict:
    stages = [{"id": "s0", "uses": "test.record", "params": params}]
    stages += [
        {"id": f"s{i}", "uses": "test.record", "needs": [f"s{i - 1}"], "params": params}
        for i in range(1, length)
    ]
    return pipeline(name, *stages)


def _task_ids(cluster, run_id: str, stage_ids) -> list[str]:
    keys = cluster.client.store.keys
    return [cluster.redis.hget(keys.stage(run_id, sid), "task_id") for sid in stage_ids]


def test_a_chain_runs_in_place_and_every_stage_commits_once(bare_cluster):
    cluster = bare_cluster
    worker = cluster.start_worker(hostname="inplace", concurrency=1)
    try:
        result = cluster.run(_chain("in-place", 30), timeout=60)
        assert result.status == "succeeded"
        run_id = result.run_id
        ids = [f"s{i}" for i in range(30)]
        assert cluster.terminal_commits(run_id) == dict.fromkeys(ids, 1)
        assert all(result.stage_results[sid]["attempts"] == 1 for sid in ids)
        assert all(cluster.count(run_id, sid) == 1 for sid in ids)
        # each stage read its parent's output, handed over with the token its parent's commit made
        assert result.outputs["s7"] == {"stage": "s7", "inputs": ["s6"]}
        # one message ran many stages: their attempts carry its task id, and its log line says so
        task_ids = _task_ids(cluster, run_id, ids)
        assert len(set(task_ids)) < 10, task_ids
        log = Path(worker.log_path).read_text(errors="replace")
        assert "succeeded; then " in log and " stages in place, the last succeeded" in log
    finally:
        worker.stop()


def test_in_place_off_sends_every_stage_through_the_queue(bare_cluster):
    cluster = bare_cluster
    worker = cluster.start_worker(hostname="queued", concurrency=1, env={"CHORDFLOW_IN_PLACE_S": "0"})
    try:
        result = cluster.run(_chain("queued", 12), timeout=60)
        assert result.status == "succeeded"
        ids = [f"s{i}" for i in range(12)]
        assert len(set(_task_ids(cluster, result.run_id, ids))) == 12
        assert cluster.terminal_commits(result.run_id) == dict.fromkeys(ids, 1)
    finally:
        worker.stop()


def test_a_child_with_a_timeout_or_limits_gets_its_own_message(bare_cluster):
    cluster = bare_cluster
    worker = cluster.start_worker(hostname="limits", concurrency=1)
    try:
        data = pipeline(
            "own-message",
            {"id": "a", "uses": "test.record"},
            {"id": "timed", "uses": "test.record", "needs": ["a"], "timeout": "30s"},
            {"id": "b", "uses": "test.record", "needs": ["timed"]},
            {"id": "limited", "uses": "test.record", "needs": ["b"], "concurrency_key": "one"},
        )
        result = cluster.run(data, timeout=60)
        assert result.status == "succeeded"
        a, timed, b, limited = _task_ids(cluster, result.run_id, ["a", "timed", "b", "limited"])
        # Celery's time limits belong to a message; a stage with limits is admitted on its own
        assert len({a, timed, b, limited}) == 4
    finally:
        worker.stop()


def test_a_worker_killed_in_an_in_place_stage_leaves_it_to_the_reaper(bare_cluster):
    cluster = bare_cluster
    doomed = cluster.start_worker(hostname="doomed", concurrency=1, env=SHORT_LEASE)
    data = pipeline(
        "killed-in-place",
        {"id": "first", "uses": "test.record"},
        {"id": "slow", "uses": "test.slow_counted", "needs": ["first"], "params": {"seconds": 4}},
        {"id": "last", "uses": "test.record", "needs": ["slow"]},
    )
    handle = cluster.client.submit(validate_data(data))
    run_id = handle.run_id
    wait_until(lambda: cluster.count(run_id, "slow") == 1, 30)
    first, slow = _task_ids(cluster, run_id, ["first", "slow"])
    assert slow == first  # `slow` runs in place, in the process that ran `first`
    doomed.kill()  # SIGKILL: no commit, no lease renewal, no message put back

    rescuer = cluster.start_worker(hostname="rescuer", concurrency=1, env=SHORT_LEASE)
    try:
        result = handle.wait(timeout=90)
        assert result.status == "succeeded"
        assert cluster.count(run_id, "slow") == 2  # started again after its lease ran out
        assert cluster.terminal_commits(run_id) == {"first": 1, "slow": 1, "last": 1}
        assert result.outputs["slow"] == "rescuer"
    finally:
        rescuer.stop()


def test_a_warm_shutdown_waits_for_in_place_stages_no_longer_than_the_setting(bare_cluster):
    cluster = bare_cluster
    env = {**SHORT_LEASE, "CHORDFLOW_IN_PLACE_S": "1"}
    leaving = cluster.start_worker(hostname="leaving", concurrency=1, env=env)
    handle = cluster.client.submit(validate_data(_chain("long-chain", 60, seconds=0.2)))
    run_id = handle.run_id
    wait_until(lambda: cluster.count(run_id, "s3") == 1, 30)
    started = time.monotonic()
    os.kill(leaving.proc.pid, signal.SIGTERM)  # a warm shutdown: the worker's main process only
    leaving.proc.wait(timeout=30)
    # a 12-second chain: the worker left after its current message's second of stages, not at the end
    assert time.monotonic() - started < 6
    assert handle.status()["status"] == "running"

    staying = cluster.start_worker(hostname="staying", concurrency=1, env=env)
    try:
        result = handle.wait(timeout=120)
        assert result.status == "succeeded"
        assert cluster.terminal_commits(run_id) == {f"s{i}": 1 for i in range(60)}
        assert all(cluster.count(run_id, f"s{i}") == 1 for i in range(60))
    finally:
        staying.stop()


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
        a_b = _task_ids(cluster, first.run_id, ["a", "b"])
        assert len(set(a_b)) == 1, "a and b (through a skip) did not run in place"
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
    ids = [f"s{i}" for i in range(40)]
    try:

        def succeeded(run_id: str) -> int:
            states = cluster.redis.hvals(keys.states(run_id))
            return sum(1 for s in states if s == "succeeded")

        # a pause: what runs finishes, nothing new starts, and resume goes on to the end
        paused = client.submit(validate_data(_chain("in-place-pause", 40, seconds=0.1)))
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
        assert len(set(_task_ids(cluster, paused.run_id, ids))) < 20, "the chain did not run in place"

        # a cancel: the run ends cancelled soon, and no stage starts after it
        cancelled = client.submit(validate_data(_chain("in-place-cancel", 40, seconds=0.1)))
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
