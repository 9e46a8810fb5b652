"""The attempt's last line of defence: whatever a stage body raises or does to its interpreter, the
attempt commits one failure (by its retry policy), with an error text that can be shown; and a
forged message cannot run what it names. Real redis-server, real worker processes."""

from __future__ import annotations

import json
import time

import pytest

from orchestration.engine.messages import stage_message
from orchestration.engine.stage_message import StageMessage
from orchestration.language.validation import validate_data
from orchestration.states import RunStatus, State

from .conftest import pipeline, wait_until


@pytest.fixture(scope="module")
def defended(bare_cluster):
    bare_cluster.start_worker(concurrency=2, env={"CHORDFLOW_IMPORTS": '["tests.defence_stages"]'})
    return bare_cluster


@pytest.mark.parametrize("what", ["unprintable", "sys.exit", "interrupt", "base", "generator_exit"])
def test_whatever_the_body_raises_is_one_failure_per_attempt(defended, what):
    result = defended.run(
        pipeline(
            f"raises-{what.replace('.', '-')}", {"id": "s", "uses": "test.raises", "params": {"what": what}}
        )
    )
    assert result.status == RunStatus.FAILED
    assert defended.count(result.run_id, "s") == 2  # max_attempts=2: twice, not the 5 deliveries of a death
    error = defended.client.status(result.run_id)["stages"]["s"]["error"]
    assert error["type"] != "PoisonMessage"
    expected = {
        "unprintable": ("Unprintable", "<unprintable Unprintable>"),
        "sys.exit": ("SystemExit", "3"),
        "interrupt": ("KeyboardInterrupt", ""),
        "base": ("Shouting", "loud"),
        "generator_exit": ("GeneratorExit", ""),
    }[what]
    assert (error["type"], error["message"]) == expected
    assert defended.terminal_commits(result.run_id) == {"s": 1}


def test_the_worker_survives_them_all(defended):
    (worker,) = defended.workers
    assert worker.proc.poll() is None
    result = defended.run(pipeline("after-all-that", {"id": "a", "uses": "noop"}))
    assert result.status == RunStatus.SUCCEEDED


def test_a_nan_output_is_refused(defended):
    result = defended.run(pipeline("nan-output", {"id": "s", "uses": "test.nan"}))
    assert result.status == RunStatus.FAILED
    error = defended.client.status(result.run_id)["stages"]["s"]["error"]
    assert "not JSON" in error["message"] and "Out of range float" in error["message"]


def _forge(cluster, message: StageMessage, node) -> None:
    cluster.redis.lpush(node.queue, stage_message(message, node))


def test_forged_messages_cannot_run_what_they_name(defended):
    """An item beyond the fan-out's items, or an attempt number ahead of the unit's, is dropped by
    begin.lua; a later attempt number cannot take over a live attempt."""
    spec = validate_data(
        pipeline(
            "forged",
            {"id": "fan", "uses": "test.record", "matrix": {"x": [1, 2, 3]}, "params": {"seconds": 1.5}},
        )
    )
    handle = defended.client.submit(spec)
    graph = defended.client.store.runs.graph(handle.run_id)
    node = graph.node("fan")
    wait_until(lambda: defended.client.store.runs.items(handle.run_id, "fan"), timeout=20)
    _forge(defended, StageMessage(handle.run_id, "fan", 1, 999), node)
    _forge(defended, StageMessage(handle.run_id, "fan", 7, 0), node)
    _forge(defended, StageMessage(handle.run_id, "fan", 2, 1), node)  # the next number, while 1 runs
    result = handle.wait(timeout=30)
    assert result.status == RunStatus.SUCCEEDED
    items = defended.client.store.runs.items(handle.run_id, "fan")
    assert sorted(items) == [0, 1, 2]
    assert {i["state"] for i in items.values()} == {State.SUCCEEDED}
    assert all(i["attempt"] == "1" for i in items.values())
    time.sleep(0.5)
    assert defended.count(handle.run_id, "fan") == 3  # each item's body ran once
    outputs = json.loads(defended.redis.hget(f"chordflow:run:{handle.run_id}:outputs", "fan"))
    assert outputs == [{"x": 1}, {"x": 2}, {"x": 3}]


def test_a_message_for_a_stage_not_ready_is_dropped(defended):
    """A stage's message that comes before its parent's commit (one restored from a primary that
    failed over, whose commit of the parent was lost) does not run on a missing input: begin.lua
    drops it, and the stage runs once, when the parent's commit makes it ready."""
    spec = validate_data(
        pipeline(
            "early",
            {"id": "parent", "uses": "test.record", "params": {"seconds": 1.5, "output": "from parent"}},
            {"id": "child", "uses": "test.echo_inputs", "needs": ["parent"]},
        )
    )
    handle = defended.client.submit(spec)
    graph = defended.client.store.runs.graph(handle.run_id)
    wait_until(
        lambda: defended.client.store.runs.stage_state(handle.run_id, "parent") == State.RUNNING, timeout=20
    )
    _forge(defended, StageMessage(handle.run_id, "child", 1), graph.node("child"))
    time.sleep(0.5)  # the forged message is taken and dropped while the parent still runs
    assert defended.client.store.runs.stage_state(handle.run_id, "child") == State.PENDING
    result = handle.wait(timeout=30)
    assert result.status == RunStatus.SUCCEEDED
    output = defended.redis.hget(f"chordflow:run:{handle.run_id}:outputs", "child")
    assert json.loads(output) == {"parent": "from parent"}
    assert defended.terminal_commits(handle.run_id)["child"] == 1
