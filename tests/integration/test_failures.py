"""Retry policies, timeouts, fallbacks and run control on real workers (issue 4)."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

from orchestration.language.validation import validate_data

from .conftest import pipeline, wait_until


def _times(cluster, run_id: str, stage_id: str) -> list[float]:
    return [float(t) for t in cluster.redis.lrange(f"test:times:{run_id}:{stage_id}", 0, -1)]


def test_exponential_backoff_delays_and_success(cluster):
    result = cluster.run(
        pipeline(
            "backoff",
            {
                "id": "flaky",
                "uses": "test.timed_flaky",
                "params": {"fail_times": 2},
                "retry": {"max_attempts": 3, "backoff": "exponential", "delay": 0.2, "multiplier": 2},
            },
        )
    )
    assert result.status == "succeeded"
    assert result.outputs["flaky"] == 3
    times = _times(cluster, result.run_id, "flaky")
    assert len(times) == 3
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert 0.1 <= gaps[0] <= 0.3 + 0.2, gaps  # 0.2 s ±50% (+ dispatch overhead)
    assert 0.2 <= gaps[1] <= 0.6 + 0.2, gaps  # 0.4 s ±50%
    assert result.stage_results["flaky"]["attempts"] == 3


def test_give_up_on_fails_at_once(cluster):
    result = cluster.run(
        pipeline(
            "give-up",
            {
                "id": "bad",
                "uses": "test.timed_flaky",
                "params": {"fail_times": 5, "error": "ValueError"},
                "retry": {"max_attempts": 5, "delay": 0.05, "give_up_on": ["ValueError"]},
            },
        )
    )
    assert result.status == "failed"
    assert len(_times(cluster, result.run_id, "bad")) == 1
    error = result.stage_results["bad"]["error"]
    assert error["type"] == "ValueError" and error["retryable"] is False and error["attempt"] == 1
    assert "Traceback" in error["traceback"]


def test_stage_types_keep_their_own_policies_and_the_file_overrides_them(cluster):
    result = cluster.run(
        pipeline(
            "policies",
            {"id": "a", "uses": "test.policy_a", "critical": False},
            {"id": "b", "uses": "test.policy_b", "critical": False},
            {"id": "b_override", "uses": "test.policy_b", "critical": False, "retry": {"max_attempts": 1}},
            fail_fast=False,
        )
    )
    assert cluster.count(result.run_id, "a") == 2
    assert cluster.count(result.run_id, "b") == 4
    assert cluster.count(result.run_id, "b_override") == 1


def test_shell_timeout_is_exit_124_and_retried(cluster):
    result = cluster.run(
        pipeline(
            "timeout",
            {
                "id": "hang",
                "run": ["sleep", "30"],
                "timeout": 0.5,
                "retry": {"max_attempts": 2, "backoff": "fixed", "delay": 0.1},
            },
        )
    )
    assert result.status == "failed"
    stage = result.stage_results["hang"]
    assert stage["attempts"] == 2
    assert stage["error"]["exit_code"] == 124
    assert stage["error"]["timeout"] is True
    assert stage["error"]["type"] == "StageTimeout"
    assert stage["finished_at"] - stage["started_at"] < 5


def test_constant_fallback(cluster):
    result = cluster.run(
        pipeline(
            "fallback-const",
            {"id": "src", "uses": "fail", "params": {"times": -1}, "fallback": {"output": {"rows": []}}},
            {"id": "use", "uses": "noop", "needs": ["src"]},
        )
    )
    assert result.status == "succeeded"
    assert result.stage_results["src"]["state"] == "fallback"
    assert result.outputs["src"] == {"rows": []}
    assert result.stage_results["src"]["error"]["type"] == "RuntimeError"


def test_last_success_fallback_uses_the_previous_good_run(cluster):
    good = cluster.run(
        pipeline(
            "fallback-last",
            {"id": "src", "uses": "noop", "params": {"output": [1, 2, 3]}, "fallback": "last_success"},
        )
    )
    assert good.status == "succeeded"
    bad = cluster.run(
        pipeline(
            "fallback-last",
            {"id": "src", "uses": "fail", "params": {"times": -1}, "fallback": "last_success"},
        )
    )
    assert bad.status == "succeeded"
    assert bad.stage_results["src"]["state"] == "fallback"
    assert bad.outputs["src"] == [1, 2, 3]


def test_cancel_during_a_fan_out(cluster):
    spec = validate_data(
        pipeline(
            "cancel",
            {"id": "items", "uses": "noop", "params": {"output": list(range(40))}},
            {
                "id": "each",
                "uses": "test.slow_counted",
                "needs": ["items"],
                "for_each": "items",
                "max_concurrency": 3,
                "params": {"seconds": 4.0},
            },
            {"id": "after", "uses": "noop", "needs": ["each"]},
        )
    )
    handle = cluster.client.submit(spec)
    wait_until(lambda: cluster.count(handle.run_id, "each") >= 3, timeout=20)
    started = time.monotonic()
    assert cluster.client.cancel(handle.run_id) == "cancelled"
    started_at_cancel = cluster.count(handle.run_id, "each")
    result = handle.wait(timeout=5)
    assert time.monotonic() - started < 5
    assert result.status == "cancelled"
    time.sleep(5)  # past the 4 s the running items would have taken
    assert cluster.count(handle.run_id, "each") == started_at_cancel  # nothing new started
    states = {sid: st["state"] for sid, st in result.stage_results.items()}
    assert states == {"items": "succeeded", "each": "cancelled", "after": "cancelled"}
    # the running items were revoked (terminated), not left to finish: none succeeded, none counted
    items = cluster.client.store.runs.items(handle.run_id, "each")
    assert sorted({item.get("state") for item in items.values()}) == ["running"], items  # killed mid-stage
    assert cluster.client.store.runs.metrics(handle.run_id) == {}


def test_a_revoke_of_a_task_this_worker_does_not_hold_is_quiet(cluster):
    """A cancel revokes on every worker; those that do not hold the task used to log "Failed to mark
    task ... as revoked in backend" for each id (no result backend: engine/results.py)."""
    cluster.client.app.control.revoke(["not-here-1", "not-here-2"], terminate=True, signal="SIGTERM")
    result = cluster.run(pipeline("after-revoke", {"id": "a", "uses": "noop"}))  # the revoke went by
    assert result.status == "succeeded"
    time.sleep(0.5)
    assert "as revoked in backend" not in Path(cluster.workers[0].log_path).read_text()


def test_pause_then_resume(cluster):
    spec = validate_data(
        pipeline(
            "pause",
            {"id": "first", "uses": "sleep", "params": {"seconds": 0.5}},
            {"id": "second", "uses": "test.record", "needs": ["first"]},
            {"id": "third", "uses": "test.record", "needs": ["second"]},
        )
    )
    handle = cluster.client.submit(spec)
    wait_until(lambda: cluster.client.status(handle.run_id)["stages"]["first"]["state"] == "running")
    assert cluster.client.pause(handle.run_id) == "paused"
    time.sleep(1.5)  # `first` (running) finishes; `second` must not start while paused
    status = cluster.client.status(handle.run_id)
    assert status["status"] == "paused"
    assert status["stages"]["first"]["state"] == "succeeded"
    assert cluster.count(handle.run_id, "second") == 0
    assert cluster.client.resume(handle.run_id) == "resumed"
    result = handle.wait(timeout=30)
    assert result.status == "succeeded"
    assert cluster.count(handle.run_id, "second") == 1 and cluster.count(handle.run_id, "third") == 1


def test_a_fan_out_made_ready_while_its_run_is_paused_starts_after_resume(cluster):
    # Given a run paused while the stage a fan-out needs is running
    spec = validate_data(
        pipeline(
            "pause-fanout",
            {"id": "first", "uses": "test.record", "params": {"seconds": 1, "output": [1, 2, 3]}},
            {"id": "each", "uses": "test.record", "for_each": "first", "needs": ["first"]},
        )
    )
    handle = cluster.client.submit(spec)
    wait_until(lambda: cluster.client.status(handle.run_id)["stages"]["first"]["state"] == "running")
    assert cluster.client.pause(handle.run_id) == "paused"
    # When `first` succeeds during the pause (the fan-out is made ready, and must not start)
    wait_until(lambda: cluster.client.status(handle.run_id)["stages"]["first"]["state"] == "succeeded")
    time.sleep(0.5)
    assert cluster.client.status(handle.run_id)["stages"]["each"]["state"] == "queued"
    assert cluster.count(handle.run_id, "each") == 0
    # Then after resume the fan-out runs its three items and the run succeeds
    assert cluster.client.resume(handle.run_id) == "resumed"
    result = handle.wait(timeout=30)
    assert result.status == "succeeded", result.stage_results
    assert cluster.count(handle.run_id, "each") == 3


def test_idempotency_key_returns_the_same_run(cluster):
    spec = validate_data(pipeline("idem", {"id": "a", "uses": "test.record"}))
    first = cluster.client.submit(spec, idempotency_key="nightly-2026-11-23")
    second = cluster.client.submit(spec, idempotency_key="nightly-2026-11-23")
    assert first.run_id == second.run_id
    first.wait(timeout=30)
    assert cluster.count(first.run_id, "a") == 1


def test_a_stage_can_force_a_retry_or_a_failure(cluster):
    result = cluster.run(
        pipeline(
            "forced",
            # no retry_on would retry RuntimeError-like errors; RetryStage retries even with retry_on set
            {
                "id": "again",
                "uses": "test.asks",
                "retry": {"max_attempts": 3, "retry_on": ["ConnectionError"]},
                "critical": False,
            },
            {
                "id": "never",
                "uses": "test.asks",
                "params": {"outcome": "fail"},
                "retry": {"max_attempts": 5},
                "critical": False,
            },
        )
    )
    assert result.outputs["again"] == 2
    assert cluster.count(result.run_id, "again") == 2
    never = result.stage_results["never"]
    assert never["state"] == "failed" and cluster.count(result.run_id, "never") == 1
    assert never["error"]["type"] == "FailStage" and never["error"]["retryable"] is False
