"""A fan-in at the validation limit (max_stages: 19,999 parents and one stage that needs them all)
begins and commits in one script call each, within a time budget, and a real worker runs it.

The parents' own runs are not what is tested here: their success is written as their commits
leave it (states and outputs), then the joining stage is sent like any ready stage. Before the
scripts read in batches, `begin.lua` failed at about 8,000 parents ("too many results to
unpack") after writing the token, and the reaper sent the stage again forever.
"""

from __future__ import annotations

import time

from orchestration.engine.commit import BeginRequest
from orchestration.engine.compiler import first_signature
from orchestration.engine.replies import BeginRun
from orchestration.engine.stage_message import StageMessage
from orchestration.graph.resolve import resolve
from orchestration.language.limits import Limits
from orchestration.language.validation import validate_data
from orchestration.states import RunStatus, State

from .conftest import wait_until

PARENTS = Limits().max_stages - 1
BUDGET_MS = 500  # one begin that reads every parent's output; measured 11 ms of Redis time, 39 ms in all


def _fan_in(cluster):
    data = {
        "name": "fan-in-limit",
        "stages": [{"id": f"p{i}", "uses": "noop"} for i in range(PARENTS)]
        + [{"id": "join", "uses": "noop", "needs": [f"p{i}" for i in range(PARENTS)]}],
    }
    store = cluster.client.store
    graph = resolve(validate_data(data))
    run_id, _ = store.runs.create_run(graph)
    k = store.keys
    cluster.redis.delete(graph.node("p0").queue)
    cluster.redis.zrem(k.outbox(), *[f"{run_id}|p{i}" for i in range(PARENTS)])
    cluster.redis.hset(k.outputs(run_id), mapping={f"p{i}": str(i) for i in range(PARENTS)})
    cluster.redis.hset(k.states(run_id), mapping={f"p{i}": State.SUCCEEDED for i in range(PARENTS)})
    cluster.redis.hset(k.states(run_id), "join", State.QUEUED)
    cluster.redis.hset(k.run(run_id), "remaining", 1)
    return run_id, graph


def test_a_fan_in_at_the_limit_begins_within_its_budget(bare_cluster):
    run_id, graph = _fan_in(bare_cluster)
    node = graph.node("join")
    started = time.perf_counter()
    begun = bare_cluster.client.store.transitions.begin(
        BeginRequest(StageMessage(run_id, "join"), "w", "cpu", "t", node.reads)
    )
    took_ms = (time.perf_counter() - started) * 1000
    assert isinstance(begun, BeginRun) and len(begun.inputs) == PARENTS
    assert begun.inputs[:3] == ["0", "1", "2"]
    assert took_ms < BUDGET_MS


def test_a_worker_runs_a_fan_in_at_the_limit(bare_cluster):
    run_id, graph = _fan_in(bare_cluster)
    bare_cluster.start_worker(concurrency=1)
    bare_cluster.client.dispatcher.send([first_signature(run_id, graph.node("join"))])
    wait_until(lambda: bare_cluster.client.store.runs.run_status(run_id) == RunStatus.SUCCEEDED, timeout=60)
    assert bare_cluster.client.status(run_id)["stages"]["join"]["attempts"] == 1
