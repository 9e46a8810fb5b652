"""`retry RUN`: the same run again from the point of failure, reusing what succeeded."""

from __future__ import annotations

from orchestration.language.validation import validate_data

from .conftest import pipeline


def test_retry_reruns_only_the_failed_stage_and_its_dependents(bare_cluster):
    cluster = bare_cluster
    closed = cluster.start_worker(hostname="before-fix", env={"GATE": "closed"})
    spec = validate_data(
        pipeline(
            "retry-run",
            {"id": "extract", "uses": "test.record"},
            {"id": "side", "uses": "test.record"},
            {"id": "gate", "uses": "test.env_gated", "needs": ["extract"], "retry": {"max_attempts": 1}},
            {"id": "load", "uses": "test.record", "needs": ["gate"]},
            {"id": "report", "uses": "test.record", "needs": ["load", "side"]},
            fail_fast=False,
        )
    )
    handle = cluster.client.submit(spec)
    first = handle.wait(timeout=60)
    assert first.status == "failed"
    assert first.stage_results["gate"]["state"] == "failed"
    assert first.stage_results["load"]["state"] == "upstream_failed"

    # The operator fixes the workers' environment and retries the run.
    closed.stop()
    cluster.redis.delete("chordflow:workers")
    cluster.start_worker(hostname="after-fix", env={"GATE": "open"})
    assert cluster.client.retry(handle.run_id) == "retrying"
    second = handle.wait(timeout=60)

    assert second.run_id == first.run_id
    assert second.status == "succeeded"
    counts = {sid: cluster.count(handle.run_id, sid) for sid in ("extract", "side", "gate", "load", "report")}
    assert counts == {"extract": 1, "side": 1, "gate": 2, "load": 1, "report": 1}
    gate = cluster.client.status(handle.run_id)["stages"]["gate"]
    assert gate["host"] == "after-fix"
    assert [h["state"] for h in gate["history"]] == ["failed"]  # the failed attempt is kept
    assert "not 'open'" in gate["history"][0]["error"]
    # `load` was reset to pending with a fresh attempt count: `gate`'s commit started it in place
    stage = cluster.client.store.keys.stage
    assert cluster.redis.hget(stage(handle.run_id, "load"), "task_id") == cluster.redis.hget(
        stage(handle.run_id, "gate"), "task_id"
    )


def test_retry_of_a_succeeded_run_is_refused(cluster):
    result = cluster.run(pipeline("ok", {"id": "a", "uses": "noop"}))
    assert (
        cluster.client.retry(result.run_id)
        == "not retried: the run succeeded; only a run that failed or was cancelled is retried"
    )
