"""What a fan-out item's begin and commit check against their stage (begin.lua, finish.lua), on a
real redis-server and without workers: an item out of range and an item of a stage that ended are
dropped; an item that commits after its stage ended is `late`. Both scripts read the stage's state
from the stage hash, with its item count and counters."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import redis

from orchestration.engine.commit import BeginRequest, CommitRequest
from orchestration.engine.replies import BeginDrop, BeginRun, CommitVerdict
from orchestration.engine.stage_message import StageMessage
from orchestration.engine.store import RunStore
from orchestration.fleet.embedded import RedisServer
from orchestration.graph.resolve import resolve
from orchestration.language.validation import validate_data
from orchestration.settings import Settings
from orchestration.states import RunStatus, State


@pytest.fixture(scope="module")
def store() -> Iterator[RunStore]:
    with RedisServer() as server:
        r = redis.Redis.from_url(server.url, decode_responses=True)
        yield RunStore(r, Settings(redis_url=server.url))


def _begin(store: RunStore, run_id: str, item: int, attempt: int = 1):
    message = StageMessage(run_id, "fan", attempt, item)
    return store.transitions.begin(BeginRequest(message, "w1", "cpu", f"t-{item}-{attempt}"))


def test_items_of_a_stage_that_ended_are_dropped_or_late(store):
    # Given a running fan-out of 4 items (3 begun) beside a stage that keeps the run going
    graph = resolve(
        validate_data(
            {
                "name": "guards",
                "fail_fast": False,
                "stages": [
                    {"id": "fan", "uses": "noop", "matrix": {"x": [1, 2, 3, 4]}},
                    {"id": "other", "uses": "noop"},
                ],
            }
        )
    )
    run_id, _ = store.runs.create_run(graph)
    assert store.transitions.start_fanout(run_id, "fan", total=4, window=4, queue="cpu") is not None
    out_of_range = _begin(store, run_id, 5)
    assert isinstance(out_of_range, BeginDrop) and "out of range" in out_of_range.why
    tokens = {}
    for i in range(3):
        begun = _begin(store, run_id, i)
        assert isinstance(begun, BeginRun)
        tokens[i] = begun.token

    def commit(i: int, outcome: State, output: str = ""):
        return store.transitions.finish(
            CommitRequest(run_id, graph, "fan", outcome, item=i, token=tokens[i], output_json=output)
        )

    assert commit(0, State.SUCCEEDED, '"a"').verdict is CommitVerdict.ITEM
    # When an item fails (the stage fails with it; the run goes on)
    failed = commit(1, State.FAILED)
    assert failed.verdict is CommitVerdict.OK and not failed.finalized
    assert store.runs.states(run_id)["fan"] == State.FAILED
    assert store.runs.run_status(run_id) == RunStatus.RUNNING
    # Then the last item's commit is late (marked cancelled, its output dropped) ...
    late = commit(2, State.SUCCEEDED, '"c"')
    assert late.verdict is CommitVerdict.LATE
    k = store.keys
    assert store._r.hget(k.items(run_id, "fan"), "2:state") == State.CANCELLED
    assert store._r.hget(k.items(run_id, "fan"), "2:output") is None
    assert store._r.hget(k.stage(run_id, "fan"), "items_done") == "1"
    # ... and an item that had not begun does not run
    unbegun = _begin(store, run_id, 3)
    assert isinstance(unbegun, BeginDrop) and unbegun.why == f"stage is {State.FAILED}"


def test_the_last_item_assembles_the_output_and_moves_the_counters_once(store):
    graph = resolve(
        validate_data(
            {"name": "assemble", "stages": [{"id": "fan", "uses": "noop", "matrix": {"x": [1, 2, 3]}}]}
        )
    )
    run_id, _ = store.runs.create_run(graph)
    store.transitions.start_fanout(run_id, "fan", total=3, window=3, queue="cpu")
    verdicts = []
    for i in (2, 0, 1):  # in any order
        begun = _begin(store, run_id, i)
        assert isinstance(begun, BeginRun)
        request = CommitRequest(
            run_id, graph, "fan", State.SUCCEEDED, item=i, token=begun.token, output_json=json.dumps(i * 10)
        )
        verdicts.append(store.transitions.finish(request))
    assert [v.verdict for v in verdicts] == [CommitVerdict.ITEM, CommitVerdict.ITEM, CommitVerdict.OK]
    assert verdicts[-1].finalized and store.runs.run_status(run_id) == RunStatus.SUCCEEDED
    assert store.runs.output(run_id, "fan") == [0, 10, 20]
    record = store._r.hgetall(store.keys.stage(run_id, "fan"))
    assert record["items_done"] == "3" and record["state"] == State.SUCCEEDED
    assert int(record["items_bytes"]) == sum(len(str(i * 10)) + 1 for i in range(3))
