"""The execution model on a real redis-server and real worker processes (issue 3)."""

from __future__ import annotations

import json
import time

import pytest

from orchestration.engine.compiler import first_signature
from orchestration.errors import InvalidPipeline
from orchestration.language.validation import validate_data

from .conftest import pipeline


def test_makespan_follows_the_critical_path_not_levels(cluster):
    # Given branch A (one 2 s stage) and branch B (four 0.5 s stages), a join on A and B2,
    # then one 0.5 s stage: the critical path is 2.5 s; a level-by-level executor takes 3.5 s.
    s = {"uses": "sleep"}
    result = cluster.run(
        pipeline(
            "no-barriers",
            {"id": "a", **s, "params": {"seconds": 2.0}},
            {"id": "b1", **s, "params": {"seconds": 0.5}},
            {"id": "b2", **s, "params": {"seconds": 0.5}, "needs": ["b1"]},
            {"id": "b3", **s, "params": {"seconds": 0.5}, "needs": ["b2"]},
            {"id": "b4", **s, "params": {"seconds": 0.5}, "needs": ["b3"]},
            {"id": "join", "uses": "noop", "needs": ["a", "b2"]},
            {"id": "last", **s, "params": {"seconds": 0.5}, "needs": ["join"]},
        )
    )
    assert result.status == "succeeded"
    stages = result.stage_results
    makespan = max(st["finished_at"] for st in stages.values()) - min(
        st["started_at"] for st in stages.values()
    )
    assert makespan <= 2.5 * 1.1 + 0.5, f"makespan {makespan:.2f}s"
    # the join started right after A, not after a whole level
    assert stages["join"]["started_at"] - stages["a"]["finished_at"] < 0.5


def test_conditions_on_variable_output_and_context(cluster):
    result = cluster.run(
        pipeline(
            "conditions",
            {"id": "flag", "uses": "test.context_writer", "params": {"key": "go", "value": True}},
            {"id": "count", "uses": "noop", "params": {"output": {"n": 3}}},
            {"id": "on_var_yes", "uses": "noop", "when": "variables.mode == 'weekly'"},
            {"id": "on_var_no", "uses": "noop", "when": "variables.mode == 'daily'"},
            {"id": "on_output_yes", "uses": "noop", "needs": ["count"], "when": "outputs.count.n > 2"},
            {"id": "on_output_no", "uses": "noop", "needs": ["count"], "when": "outputs.count.n > 5"},
            {"id": "on_context_yes", "uses": "noop", "needs": ["flag"], "when": "context.go == true"},
            {"id": "on_context_no", "uses": "noop", "needs": ["flag"], "when": "context.missing"},
            {"id": "after_skip", "uses": "noop", "needs": ["on_var_no"], "params": {"output": "ran"}},
            variables={"mode": "weekly"},
        )
    )
    states = {sid: st["state"] for sid, st in result.stage_results.items()}
    assert states == {
        "flag": "succeeded",
        "count": "succeeded",
        "on_var_yes": "succeeded",
        "on_var_no": "skipped",
        "on_output_yes": "succeeded",
        "on_output_no": "skipped",
        "on_context_yes": "succeeded",
        "on_context_no": "skipped",
        "after_skip": "succeeded",
    }
    assert result.status == "succeeded"
    assert result.outputs["after_skip"] == "ran"


def test_matrix_runs_every_instance_and_collects_in_order(cluster):
    result = cluster.run(
        pipeline(
            "matrix",
            {"id": "train", "uses": "noop", "matrix": {"lr": [0.1, 0.01], "seed": [1, 2]}},
            {"id": "pick", "uses": "noop", "needs": ["train"]},
        )
    )
    assert result.status == "succeeded"
    assert result.outputs["train"] == [
        {"lr": 0.1, "seed": 1},
        {"lr": 0.1, "seed": 2},
        {"lr": 0.01, "seed": 1},
        {"lr": 0.01, "seed": 2},
    ]
    assert result.stage_results["train"]["items_total"] == 4


def test_fail_fast_cancels_what_has_not_started(cluster):
    result = cluster.run(
        pipeline(
            "fail-fast",
            {"id": "boom", "uses": "fail", "params": {"times": -1, "error": "ValueError"}},
            {"id": "slow", "uses": "sleep", "params": {"seconds": 1.0}},
            {"id": "after_slow", "uses": "test.record", "needs": ["slow"]},
            {"id": "after_boom", "uses": "test.record", "needs": ["boom"]},
            fail_fast=True,
        )
    )
    states = {sid: st["state"] for sid, st in result.stage_results.items()}
    assert result.status == "failed"
    assert states["boom"] == "failed"
    assert states["after_boom"] in ("cancelled", "upstream_failed")
    assert states["after_slow"] == "cancelled"
    assert states["slow"] in ("cancelled", "succeeded")
    time.sleep(1.5)  # nothing new starts after the failure
    assert cluster.count(result.run_id, "after_slow") == 0
    assert cluster.count(result.run_id, "after_boom") == 0
    assert result.stage_results["boom"]["error"]["type"] == "ValueError"


def test_without_fail_fast_independent_branches_finish(cluster):
    result = cluster.run(
        pipeline(
            "no-fail-fast",
            {"id": "boom", "uses": "fail", "params": {"times": -1}},
            {"id": "after_boom", "uses": "noop", "needs": ["boom"]},
            {"id": "deeper", "uses": "noop", "needs": ["after_boom"]},
            {"id": "slow", "uses": "sleep", "params": {"seconds": 0.5}},
            {"id": "after_slow", "uses": "noop", "needs": ["slow"]},
            fail_fast=False,
        )
    )
    states = {sid: st["state"] for sid, st in result.stage_results.items()}
    assert result.status == "failed"
    assert states == {
        "boom": "failed",
        "after_boom": "upstream_failed",
        "deeper": "upstream_failed",
        "slow": "succeeded",
        "after_slow": "succeeded",
    }
    assert set(result.failed) == {"boom", "after_boom", "deeper"}


def test_non_critical_failure_does_not_fail_the_run(cluster):
    result = cluster.run(
        pipeline(
            "non-critical",
            {"id": "optional", "uses": "fail", "params": {"times": -1}, "critical": False},
            {"id": "after", "uses": "noop", "needs": ["optional"], "params": {"output": "ok"}},
        )
    )
    states = {sid: st["state"] for sid, st in result.stage_results.items()}
    assert states == {"optional": "failed", "after": "succeeded"}
    assert result.status == "succeeded"


def test_output_over_the_cap_fails_with_advice(cluster):
    result = cluster.run(
        pipeline("big", {"id": "big", "uses": "test.big_output", "params": {"size": 1_100_000}})
    )
    assert result.status == "failed"
    error = result.stage_results["big"]["error"]
    assert error["type"] == "OutputTooLarge"
    assert "return a reference" in error["message"]
    assert result.stage_results["big"]["attempts"] == 1


def test_unregistered_callable_is_refused_at_submit(cluster):
    spec = validate_data(pipeline("evil", {"id": "x", "uses": "os:system", "params": {"command": "true"}}))
    keys_before = set(cluster.redis.keys("chordflow:*"))
    runs_before = cluster.redis.zcard("chordflow:runs")
    with pytest.raises(InvalidPipeline) as info:
        cluster.client.submit(spec)
    assert "os:system" in str(info.value) and "no live worker serves" in str(info.value)
    # nothing half-written: no run record, no run's keys (keys other tests' runs add as they end,
    # written by the workers' hook senders meanwhile, are not this submit's)
    new_keys = set(cluster.redis.keys("chordflow:*")) - keys_before
    assert cluster.redis.zcard("chordflow:runs") == runs_before
    assert not [k for k in new_keys if k.startswith(("chordflow:run:", "chordflow:outbox", "chordflow:idem"))]


def test_worker_refuses_a_hand_made_task_for_an_unregistered_type(cluster, tmp_path):
    marker = tmp_path / "pwned"
    spec = validate_data(
        pipeline("evil", {"id": "x", "uses": "os:system", "params": {"command": f"touch {marker}"}})
    )
    runs_before = cluster.redis.zcard("chordflow:runs")
    handle = cluster.client.submit(spec, check_types=False)
    assert cluster.redis.zcard("chordflow:runs") == runs_before + 1
    node = cluster.client.store.runs.graph(handle.run_id).node("x")
    # by hand: the unregistered task name, and a registered one pointed at the os:system stage
    cluster.client.app.send_task("stage.os:system", args=(handle.run_id, "x", 1, None), queue="cpu")
    cluster.client.app.send_task("stage.noop", args=(handle.run_id, "x", 1, None), queue="cpu")
    cluster.client.app.send_task("stage.noop", args=("not-a-run", "x", "1; rm -rf /", None), queue="cpu")
    time.sleep(2)
    assert not marker.exists()
    # No worker serves that type: the stage fails with an error that says so (it never runs).
    x = cluster.client.status(handle.run_id)["stages"]["x"]
    assert x["state"] == "failed" and x["error"]["type"] == "UnservedStageType"
    assert node.type == "os:system"
    assert not marker.exists()


def test_duplicate_delivery_commits_once(cluster):
    spec = validate_data(
        pipeline(
            "dupes",
            {
                "id": "a",
                "uses": "test.context_writer",
                "params": {"key": "k", "value": 1, "metric": "rows", "amount": 5},
            },
            {"id": "slow", "uses": "sleep", "params": {"seconds": 0.3}},
            {"id": "join", "uses": "test.record", "needs": ["a", "slow"]},
        )
    )
    handle = cluster.client.submit(spec)
    graph = cluster.client.store.runs.graph(handle.run_id)
    # the same message for `a` twice more, while it may still be running and after it committed
    cluster.client.dispatcher.send([first_signature(handle.run_id, graph.node("a"))])
    result = handle.wait(timeout=30)
    cluster.client.dispatcher.send(
        [first_signature(handle.run_id, graph.node("a")), first_signature(handle.run_id, graph.node("join"))]
    )
    time.sleep(1.0)
    assert result.status == "succeeded"
    assert cluster.count(handle.run_id, "join") == 1
    assert cluster.client.store.runs.metrics(handle.run_id) == {"rows": 5}
    assert cluster.client.store.runs.context(handle.run_id)["writers"] == 1
    assert cluster.client.status(handle.run_id)["stages"]["a"]["attempts"] == 1


def test_run_keys_get_a_ttl_when_the_run_ends(cluster):
    result = cluster.run(pipeline("ttl", {"id": "a", "uses": "noop"}))
    # the run's end is seen as soon as the commit lands; its worker sets the TTLs right after it
    deadline = time.monotonic() + 5
    while (ttl := cluster.redis.ttl(f"chordflow:run:{result.run_id}")) < 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert 0 < ttl <= cluster.settings.run_ttl_s
    assert cluster.redis.ttl(f"chordflow:run:{result.run_id}:events") > 0


def test_events_stream_records_every_state_change(cluster):
    result = cluster.run(
        pipeline("events", {"id": "a", "uses": "noop"}, {"id": "b", "uses": "noop", "needs": ["a"]})
    )
    events = cluster.client.store.runs.events(result.run_id)
    seen = [(e.get("kind"), e.get("stage"), e.get("state")) for _, e in events]
    assert ("stage", "a", "running") in seen and ("stage", "a", "succeeded") in seen
    assert seen[-1] == ("run", None, "succeeded")
    assert json.loads(cluster.redis.hget(f"chordflow:run:{result.run_id}", "variables")) == {}
