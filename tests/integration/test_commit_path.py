"""Every attempt ends in exactly one clean commit, whatever it wrote and whatever Redis says.

Each test is one failure found on the old commit path. Each runs on a real redis-server with
real worker processes and checks the end state a user sees: the run ended, each stage was
committed once (one terminal event per stage in the run's event stream), and the error is
shown in `status`.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from orchestration.language.validation import validate_data

from .conftest import ROOT, pipeline, wait_until

# A short lease, so that a lost lease shows within seconds.
SHORT_LEASE = {"CHORDFLOW_LEASE_S": "3", "CHORDFLOW_HEARTBEAT_S": "0.5", "CHORDFLOW_OUTBOX_GRACE_S": "2"}


@pytest.fixture(scope="module")
def fleet(bare_cluster):
    bare_cluster.start_worker(concurrency=2, env=SHORT_LEASE)
    return bare_cluster


def run(cluster, data: dict, timeout: float = 60):
    handle = cluster.client.submit(validate_data(data))
    result = handle.wait(timeout=timeout)
    return result, cluster.client.status(handle.run_id)


def error_of(status: dict, stage_id: str) -> dict:
    error = status["stages"][stage_id].get("error")
    assert error, f"status shows no error for {stage_id}: {status['stages'][stage_id]}"
    return error


def test_incr_on_a_text_context_value_fails_the_stage_cleanly(fleet):
    result, status = run(
        fleet,
        pipeline(
            "ctx-types",
            {"id": "a", "uses": "test.context_writer", "params": {"key": "rows", "value": "many"}},
            {"id": "b", "uses": "test.incr_context", "params": {"key": "rows"}, "needs": ["a"]},
        ),
    )
    assert result.status == "failed"
    assert status["stages"]["b"]["state"] == "failed"
    error = error_of(status, "b")
    assert error["type"] == "CommitRefused"
    assert "rows" in error["message"] and "not a number" in error["message"]
    assert fleet.count(result.run_id, "b") == 1
    assert fleet.terminal_commits(result.run_id) == {"a": 1, "b": 1}
    # nothing of b's attempt was written: the context value is still a's
    assert fleet.client.store.runs.context(result.run_id)["rows"] == "many"


def test_a_metric_that_is_not_finite_fails_the_stage_cleanly(fleet):
    result, status = run(
        fleet,
        pipeline(
            "nan-metric",
            {"id": "m", "uses": "test.bad_metric", "params": {"value": "nan"}},
            {"id": "after", "uses": "noop", "needs": ["m"]},
        ),
    )
    assert result.status == "failed"
    assert status["stages"]["m"]["state"] == "failed"
    assert "finite" in error_of(status, "m")["message"]
    assert status["stages"]["after"]["state"] == "cancelled"  # fail_fast, the default
    assert fleet.count(result.run_id, "m") == 1
    assert fleet.terminal_commits(result.run_id) == {"m": 1, "after": 1}
    assert "m" not in fleet.client.store.runs.metrics(result.run_id)


def test_a_condition_on_matrix_is_decided_per_instance(fleet):
    result, status = run(
        fleet,
        pipeline(
            "per-item-when",
            {"id": "train", "uses": "noop", "matrix": {"lr": [0.1, 0.01, 0.5]}, "when": "matrix.lr >= 0.1"},
        ),
    )
    assert result.status == "succeeded", status
    assert status["stages"]["train"]["state"] == "succeeded"
    items = fleet.client.store.runs.items(result.run_id, "train")
    assert [items[i]["state"] for i in range(3)] == ["succeeded", "skipped", "succeeded"]
    assert result.outputs["train"] == [{"lr": 0.1}, None, {"lr": 0.5}]


def test_a_condition_on_item_is_decided_per_item(fleet):
    result, status = run(
        fleet,
        pipeline(
            "per-item-when-2",
            {"id": "list", "uses": "noop", "params": {"output": [1, 2, 3, 4]}},
            {"id": "even", "uses": "noop", "needs": ["list"], "for_each": "list", "when": "item % 2 == 0"},
        ),
    )
    assert result.status == "succeeded", status
    assert result.outputs["even"] == [None, 2, None, 4]
    assert fleet.terminal_commits(result.run_id) == {"list": 1, "even": 1}


def test_a_fan_out_over_a_value_that_is_not_a_list_keeps_its_error(fleet):
    result, status = run(
        fleet,
        pipeline(
            "not-a-list",
            {"id": "src", "uses": "noop", "params": {"output": {"a": 1}}},
            {"id": "each", "uses": "noop", "needs": ["src"], "for_each": "src"},
        ),
    )
    assert result.status == "failed"
    assert status["stages"]["each"]["state"] == "failed"
    error = error_of(status, "each")
    assert error["type"] == "FanOutError" and "must output a list" in error["message"]
    assert fleet.terminal_commits(result.run_id) == {"src": 1, "each": 1}


def test_a_condition_error_on_a_fan_out_keeps_its_error(fleet):
    result, status = run(
        fleet,
        pipeline(
            "cond-error",
            {"id": "src", "uses": "noop", "params": {"output": [1, 2]}},
            {
                "id": "each",
                "uses": "noop",
                "needs": ["src"],
                "for_each": "src",
                "when": "outputs.src['x'] > 1",
            },
        ),
    )
    assert result.status == "failed"
    assert error_of(status, "each")["type"] == "ConditionError"


def test_retry_run_keeps_the_items_that_succeeded(fleet):
    gate = f"items-{time.time_ns()}"
    fleet.redis.set(f"test:gate:{gate}", 1)
    handle = fleet.client.submit(
        validate_data(
            pipeline(
                "retry-items",
                {"id": "src", "uses": "noop", "params": {"output": list(range(6))}},
                {
                    "id": "each",
                    "uses": "test.item_gate",
                    "params": {"fail_item": 3, "gate": gate},
                    "needs": ["src"],
                    "for_each": "src",
                    "max_concurrency": 2,
                },
            )
        )
    )
    run_id = handle.run_id
    first = handle.wait(timeout=60)
    assert first.status == "failed"
    kept = {
        i
        for i, item in fleet.client.store.runs.items(run_id, "each").items()
        if item.get("state") == "succeeded"
    }
    assert kept and 3 not in kept
    fleet.redis.delete(f"test:gate:{gate}")
    assert fleet.client.retry(run_id) == "retrying"
    second = handle.wait(timeout=60)
    assert second.status == "succeeded", fleet.client.status(run_id)
    runs = {i: int(fleet.redis.get(f"test:count:{run_id}:each:{i}") or 0) for i in range(6)}
    # the items that had succeeded did not run again; item 3 (and any item whose result the
    # failure dropped while it ran) ran once more
    assert {i: runs[i] for i in kept} == dict.fromkeys(kept, 1), runs
    assert runs[3] == 2, runs
    assert [o["item"] for o in second.outputs["each"]] == list(range(6))


def test_an_attempt_that_lost_its_lease_writes_no_cache(fleet):
    spec = validate_data(
        pipeline(
            "cache-fence",
            {"id": "slow", "uses": "test.stubborn", "params": {"seconds": 2.5}, "cache": {"ttl": "1h"}},
        )
    )
    handle = fleet.client.submit(spec)
    stage_key = f"chordflow:run:{handle.run_id}:stage:slow"
    wait_until(lambda: fleet.redis.hget(stage_key, "state") == "running", timeout=20)
    # Another holder takes the stage: attempt 1's token is no longer the stage's.
    fleet.redis.hset(stage_key, "token", "999999999")
    result = handle.wait(timeout=60)
    assert result.status == "succeeded"
    # attempt 1's late result reached neither the stage nor the cache: attempt 2 ran for real
    assert result.outputs["slow"]["attempt"] == 2
    assert fleet.count(handle.run_id, "slow") == 2
    assert fleet.terminal_commits(handle.run_id) == {"slow": 1}


def test_redis_out_of_memory_fails_the_stage_and_the_worker_stays_up(bare_cluster):
    cluster = bare_cluster
    worker = cluster.workers[0]
    pid = worker.proc.pid
    r = cluster.redis
    spec = validate_data(
        pipeline(
            "oom",
            {"id": "big", "uses": "test.stubborn", "params": {"seconds": 2.0, "size": 300_000}},
            {"id": "after", "uses": "noop", "needs": ["big"]},
        )
    )
    handle = cluster.client.submit(spec)
    stage_key = f"chordflow:run:{handle.run_id}:stage:big"
    wait_until(lambda: r.hget(stage_key, "state") == "running", timeout=20)
    r.config_set("maxmemory-policy", "noeviction")
    r.config_set("maxmemory", int(r.info("memory")["used_memory"]) + 100_000)
    try:
        wait_until(lambda: r.hget(stage_key, "state") in ("failed", "retrying"), timeout=30)
        health = subprocess.run(
            [sys.executable, "-m", "orchestration", "health"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            env={**_env(cluster)},
        )
        assert health.returncode == 1, health.stdout + health.stderr
        assert "memory" in (health.stdout + health.stderr).lower()
    finally:
        r.config_set("maxmemory", 0)
    result = handle.wait(timeout=60)
    assert result.status == "failed"
    status = cluster.client.status(handle.run_id)
    error = error_of(status, "big")
    assert error["type"] == "RedisRefusedWrite" and "out of memory" in error["message"]
    assert status["stages"]["after"]["state"] == "cancelled"  # fail_fast, the default
    assert cluster.count(handle.run_id, "big") == 1
    assert cluster.terminal_commits(handle.run_id) == {"big": 1, "after": 1}
    # the same worker process is still up and serving
    assert worker.proc.poll() is None and worker.proc.pid == pid
    again, _ = run(cluster, pipeline("after-oom", {"id": "ok", "uses": "noop"}), timeout=90)
    assert again.status == "succeeded"


def _env(cluster) -> dict[str, str]:
    import os

    return {**os.environ, "CHORDFLOW_REDIS_URL": cluster.server.url, "PYTHONPATH": str(ROOT)}


def test_a_fan_out_cannot_assemble_an_output_over_its_cap(bare_cluster):
    """30 items of 100 KB against a 1 MB cap: the stage fails with a clear error, not a 3 MB output."""
    cluster = bare_cluster
    for other in cluster.workers:  # only workers with the 1 MB cap commit these items
        other.stop()
    cluster.start_worker(
        hostname="capped", concurrency=2, env={"CHORDFLOW_FANOUT_OUTPUT_CAP_BYTES": "1000000"}
    )
    result, status = run(
        cluster,
        pipeline(
            "fanout-cap",
            {"id": "src", "uses": "noop", "params": {"output": list(range(30))}},
            {
                "id": "each",
                "uses": "test.blob",
                "params": {"size": 100_000},
                "needs": ["src"],
                "for_each": "src",
                "max_concurrency": 2,
            },
        ),
    )
    assert result.status == "failed"
    error = error_of(status, "each")
    assert error["type"] == "CommitRefused" and "CHORDFLOW_FANOUT_OUTPUT_CAP_BYTES" in error["message"]
    assert "each" not in cluster.client.store.runs.outputs(result.run_id)
    assert cluster.terminal_commits(result.run_id) == {"src": 1, "each": 1}
