"""The admission scripts (lua/_limits.lua through begin, finish, retry, renew, sweep) against a real
redis-server, without workers: each reply and each key a user's run would leave behind."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
import redis

from orchestration.engine.commit import BeginRequest, CommitRequest, RetryRequest
from orchestration.engine.limits import Capacity, Count, Gate, Rate
from orchestration.engine.replies import BeginRun, BeginWait, CommitVerdict
from orchestration.engine.stage_message import StageMessage
from orchestration.engine.store import RunStore
from orchestration.fleet.embedded import RedisServer
from orchestration.graph.resolve import resolve
from orchestration.language.validation import validate_data
from orchestration.settings import Settings
from orchestration.states import State

HOST = Capacity("w1", ("0", "1"), 64.0, 4)


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with RedisServer() as s:
        yield s


@pytest.fixture
def store(server) -> RunStore:
    r = redis.Redis.from_url(server.url, decode_responses=True)
    r.flushall()
    return RunStore(r, Settings(redis_url=server.url, lease_s=30))


def new_run(store: RunStore, n: int = 4) -> tuple[str, object]:
    spec = validate_data({"name": "limits", "stages": [{"id": f"s{i}", "uses": "noop"} for i in range(n)]})
    graph = resolve(spec)
    run_id, _ = store.runs.create_run(graph)
    return run_id, graph


def begin(store, run_id, sid, gate, capacity=HOST, attempt=1):
    message = StageMessage(run_id, sid, attempt)
    return store.transitions.begin(BeginRequest(message, "w1", "cpu", f"t-{sid}", gate=(gate, capacity)))


def finish(store, run_id, graph, sid, token, gate, capacity=HOST):
    request = CommitRequest(
        run_id, graph, sid, State.SUCCEEDED, token=str(token), output_json="null", release=(gate, capacity)
    )
    return store.transitions.finish(request)


def delayed(store) -> list[tuple[list, float]]:
    return [(json.loads(p), s) for p, s in store._r.zrange(store.keys.delayed(), 0, -1, withscores=True)]


def test_a_full_pool_parks_the_stage_and_a_commit_wakes_it(store):
    run_id, graph = new_run(store)
    gate = Gate(counts=(Count("pool:llm", 1, "pool llm"),))
    first = begin(store, run_id, "s0", gate)
    assert isinstance(first, BeginRun) and first.devices == ""
    token = first.token
    assert begin(store, run_id, "s1", gate) == BeginWait("pool llm 1/1")
    stage = store._r.hgetall(store.keys.stage(run_id, "s1"))
    assert stage["waiting"] == "pool llm 1/1" and "waiting_since" in stage and "token" not in stage
    assert store.runs.states(run_id)["s1"] == "queued"
    assert store._r.zcard(store.keys.limit_waiting("pool:llm")) == 1
    assert delayed(store) == []

    assert finish(store, run_id, graph, "s0", token, gate).verdict is CommitVerdict.OK
    assert [p for p, _ in delayed(store)] == [[run_id, "s1", 1, None]]  # woken: due now
    assert store._r.zcard(store.keys.limit_waiting("pool:llm")) == 0
    assert store._r.zcard(store.keys.limit_holds("pool:llm")) == 0
    assert isinstance(begin(store, run_id, "s1", gate), BeginRun)
    assert "waiting" not in store._r.hgetall(store.keys.stage(run_id, "s1"))


def test_a_holder_whose_lease_ran_out_no_longer_counts_and_the_sweep_wakes_its_waiters(store):
    run_id, _ = new_run(store)
    store = RunStore(store._r, Settings(redis_url="redis://unused", lease_s=0.3))  # short leases
    gate = Gate(counts=(Count("pool:llm", 1, "pool llm"),))
    assert isinstance(begin(store, run_id, "s0", gate), BeginRun)
    assert isinstance(begin(store, run_id, "s1", gate), BeginWait)
    assert store.capacity.sweep_waiting(dict) == 0  # the holder's lease is live
    time.sleep(0.4)  # the holder's worker "died": nobody renews
    assert store.capacity.sweep_waiting(dict) == 1
    assert [p for p, _ in delayed(store)] == [[run_id, "s1", 1, None]]
    assert store._r.hgetall(store.keys.limits_waited()) == {}  # nothing waits any more


def test_renewal_keeps_the_holder_counted(store):
    run_id, _ = new_run(store)
    store = RunStore(store._r, Settings(redis_url="redis://unused", lease_s=0.3))  # short leases
    gate = Gate(counts=(Count("pool:llm", 1, "pool llm"),))
    token = begin(store, run_id, "s0", gate).token
    for _ in range(3):
        time.sleep(0.15)
        assert store.transitions.renew(
            run_id, "s0", None, str(token), holds=[store.keys.limit_holds("pool:llm")]
        )
    assert isinstance(begin(store, run_id, "s1", gate), BeginWait)


def test_a_rate_limit_gives_waiting_stages_spaced_reserved_slots(store):
    run_id, _ = new_run(store, 5)
    gate = Gate(rates=(Rate("type:noop", 200.0, "rate noop 5/s"),))
    assert isinstance(begin(store, run_id, "s0", gate), BeginRun)
    assert begin(store, run_id, "s1", gate) == BeginWait("rate noop 5/s")
    assert isinstance(begin(store, run_id, "s2", gate), BeginWait)
    slots = [score for _, score in delayed(store)]
    assert len(slots) == 2 and slots[1] - slots[0] == 200  # one wake per slot: no herd
    # the reserved stage, back at its slot, starts; a newcomer may not jump the queue
    time.sleep(max(0.0, (slots[0] - store.runs.server_time() * 1000) / 1000) + 0.01)
    assert isinstance(begin(store, run_id, "s1", gate), BeginRun)
    assert isinstance(begin(store, run_id, "s3", gate), BeginWait)
    assert [score for _, score in delayed(store)][-1] == slots[1] + 200


def test_the_worker_ledger_gives_distinct_gpus_and_parks_what_does_not_fit(store):
    run_id, graph = new_run(store)
    one = Gate(gpu=1, queue="gpu")
    first = begin(store, run_id, "s0", one)
    second = begin(store, run_id, "s1", one)
    assert isinstance(first, BeginRun) and isinstance(second, BeginRun)
    assert {first.devices, second.devices} == {"0", "1"}
    assert store._r.hget(store.keys.stage(run_id, "s0"), "gpus") == first.devices
    refused = begin(store, run_id, "s2", Gate(gpu=2, queue="gpu"))
    assert refused == BeginWait("capacity gpu: needs 2 GPU (0 of 2 free) on w1")
    (member,) = store._r.zrange(store.keys.capacity_waiting("gpu"), 0, -1)
    assert json.loads(member) == {
        "p": StageMessage(run_id, "s2").payload(),
        "run": run_id,
        "stage": "s2",
        "item": None,
        "gpu": 2,
        "memory_gb": None,
    }
    finish(store, run_id, graph, "s0", first.token, one)
    assert delayed(store) == []  # one GPU free: the two-GPU stage still does not fit
    finish(store, run_id, graph, "s1", second.token, one)
    assert [p for p, _ in delayed(store)] == [[run_id, "s2", 1, None]]
    assert begin(store, run_id, "s2", Gate(gpu=2, queue="gpu")).devices == "0,1"


def test_memory_is_admitted_against_the_worker_s_gb(store):
    run_id, _ = new_run(store)
    big = Gate(memory_gb=48.0, queue="highmem")
    assert isinstance(begin(store, run_id, "s0", big), BeginRun)
    assert begin(store, run_id, "s1", big) == BeginWait("capacity highmem: needs 48 GB (16 of 64 free) on w1")
    assert isinstance(begin(store, run_id, "s2", Gate(memory_gb=16.0, queue="highmem")), BeginRun)


def test_a_retry_gives_the_slot_back(store):
    run_id, _ = new_run(store)
    gate = Gate(counts=(Count("key:deploy-prod", 1, "key deploy-prod"),))
    token = begin(store, run_id, "s0", gate).token
    assert isinstance(begin(store, run_id, "s1", gate), BeginWait)
    reply = store.transitions.retry(
        RetryRequest(StageMessage(run_id, "s0"), str(token), {"type": "X"}, 0.0, False, release=(gate, HOST))
    )
    assert reply.held
    assert store._r.zcard(store.keys.limit_holds("key:deploy-prod")) == 0
    assert [p for p, _ in delayed(store)] == [[run_id, "s1", 1, None]]
