"""Acknowledged writes (CHORDFLOW_REPLICAS_ACK, engine/durability.py) and tokens that survive a
failover, against a real primary and replica (redis-server), without workers: each reply a worker
would get, and what a commit sent twice leaves behind."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest
import redis

from orchestration.engine.commit import BeginRequest, CommitRequest
from orchestration.engine.replies import BeginRun, CommitVerdict, Replication
from orchestration.engine.stage_message import StageMessage
from orchestration.engine.store import RunStore
from orchestration.errors import NotReplicated
from orchestration.fleet.embedded import RedisServer
from orchestration.graph.resolve import resolve
from orchestration.language.validation import validate_data
from orchestration.settings import Settings
from orchestration.states import State


def _attach(replica: RedisServer, primary: RedisServer) -> None:
    r = redis.Redis.from_url(replica.url)
    r.replicaof("127.0.0.1", primary.port)
    deadline = time.monotonic() + 10
    # online on the primary's side (its ROLE), which comes after the replica's first ACK
    while str(replica.port) not in [
        p for _, p, _ in redis.Redis.from_url(primary.url, decode_responses=True).execute_command("ROLE")[2]
    ]:
        assert time.monotonic() < deadline, "the replica did not connect"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[RedisServer, RedisServer]]:
    with RedisServer() as primary, RedisServer() as replica:
        _attach(replica, primary)
        yield primary, replica


def _store(server: RedisServer, tmp_path, **settings) -> RunStore:
    r = redis.Redis.from_url(server.url, decode_responses=True)
    return RunStore(r, Settings(redis_url=server.url, test_ack_log=str(tmp_path / "acks.jsonl"), **settings))


def _graph(name="durable", n=2):
    return resolve(
        validate_data({"name": name, "stages": [{"id": f"s{i}", "uses": "noop"} for i in range(n)]})
    )


def _begin(store, run_id, sid="s0") -> BeginRun:
    begun = store.transitions.begin(BeginRequest(StageMessage(run_id, sid), "w1", "cpu", f"t-{sid}"))
    assert isinstance(begun, BeginRun)
    return begun


def test_a_token_carries_an_epoch(pair, tmp_path):
    store = _store(pair[0], tmp_path)
    run_id, _ = store.runs.create_run(_graph())
    token = _begin(store, run_id).token
    fence, epoch = token.split(".")
    assert fence == "1" and abs(int(epoch) / 1e6 - store.runs.server_time()) < 5


def test_a_token_issued_again_after_a_lost_write_does_not_match(pair, tmp_path):
    """A failover to a replica that missed a begin hands out the same fence number again: the
    epoch tells the two tokens apart, so the old holder's commit is refused."""
    store = _store(pair[0], tmp_path)
    graph = _graph()
    run_id, _ = store.runs.create_run(graph)
    old = _begin(store, run_id).token
    # what a lagging replica promoted would hold: the unit as it was before that begin
    store._r.hset(store.keys.run(run_id), "fence", 0)
    store._r.hset(store.keys.stage(run_id, "s0"), mapping={"state": State.QUEUED, "attempt": 0})
    store._r.hset(store.keys.states(run_id), "s0", State.QUEUED)
    new = _begin(store, run_id).token
    assert new.split(".")[0] == old.split(".")[0] and new != old
    stale = store.transitions.finish(
        CommitRequest(run_id, graph, "s0", State.SUCCEEDED, token=old, output_json="1")
    )
    assert stale.verdict is CommitVerdict.STALE
    ok = store.transitions.finish(
        CommitRequest(run_id, graph, "s0", State.SUCCEEDED, token=new, output_json="2")
    )
    assert ok.verdict is CommitVerdict.OK and store.runs.output(run_id, "s0") == 2


def test_a_commit_sent_again_is_already_in_and_changes_nothing(pair, tmp_path):
    store = _store(pair[0], tmp_path)
    graph = _graph(n=1)
    run_id, _ = store.runs.create_run(graph)
    token = _begin(store, run_id).token
    request = CommitRequest(run_id, graph, "s0", State.SUCCEEDED, token=token, output_json='"x"')
    first = store.transitions.finish(request)
    assert first.verdict is CommitVerdict.OK and first.finalized
    events = store._r.xlen(store.keys.events(run_id))
    again = store.transitions.finish(request)
    assert again.verdict is CommitVerdict.ALREADY and again.committed
    assert store._r.xlen(store.keys.events(run_id)) == events  # nothing written twice
    assert store.runs.run_status(run_id) == "succeeded"  # not a state literal: the test's expectation


def test_a_stage_cancelled_under_its_attempt_is_stale_not_already(pair, tmp_path):
    store = _store(pair[0], tmp_path)
    graph = _graph(n=1)
    run_id, _ = store.runs.create_run(graph)
    token = _begin(store, run_id).token
    assert store.transitions.control(run_id, "cancel")[0] == "ok"
    late = store.transitions.finish(
        CommitRequest(run_id, graph, "s0", State.SUCCEEDED, token=token, output_json="1")
    )
    assert late.verdict is CommitVerdict.STALE


def test_with_replicas_ack_a_commit_says_how_many_replicas_have_it(pair, tmp_path):
    store = _store(pair[0], tmp_path, replicas_ack=1)
    graph = _graph(n=1)
    run_id, _ = store.runs.create_run(graph)
    token = _begin(store, run_id).token
    commit = store.transitions.finish(
        CommitRequest(run_id, graph, "s0", State.SUCCEEDED, token=token, output_json="1")
    )
    assert commit.verdict is CommitVerdict.OK and commit.replication == Replication(1, 1)
    assert '"created":true' in (tmp_path / "acks.jsonl").read_text()


def test_a_run_no_replica_confirms_is_not_acknowledged(pair, tmp_path):
    primary, replica = pair
    store = _store(primary, tmp_path, replicas_ack=1, replicas_ack_timeout_ms=200)
    assert replica.proc is not None
    os.kill(replica.proc.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(NotReplicated, match="0 of 1 replicas confirmed it"):
            store.runs.create_run(_graph("unconfirmed"))
        assert time.monotonic() - started < 3
        graph = _graph(n=1)
        store = RunStore(store._r, Settings(redis_url=primary.url))  # acknowledgements off: create and begin
        run_id, _ = store.runs.create_run(graph)
        token = _begin(store, run_id).token
        store = RunStore(
            store._r, Settings(redis_url=primary.url, replicas_ack=1, replicas_ack_timeout_ms=200)
        )
        request = CommitRequest(run_id, graph, "s0", State.SUCCEEDED, token=token, output_json="1")
        assert store.transitions.finish(request).replication == Replication(0, 1)
    finally:
        os.kill(replica.proc.pid, signal.SIGCONT)
    assert (tmp_path / "acks.jsonl").exists() is False  # nothing was acknowledged


def _online(primary: RedisServer) -> int:
    return len(redis.Redis.from_url(primary.url).execute_command("ROLE")[2])


def test_with_two_replicas_one_confirming_is_not_enough_while_the_other_is_attached(tmp_path):
    """N=1 of 2: Sentinel may promote the replica that did not confirm (it ranks them by offsets up
    to 5 s old), so a write waits for every attached replica, and N is enough once the primary has
    dropped the silent one."""
    with RedisServer() as primary, RedisServer() as fast, RedisServer() as stalled:
        _attach(fast, primary)
        _attach(stalled, primary)
        link = redis.Redis.from_url(stalled.url).client_list(_type="master")[0]["laddr"]
        store = _store(primary, tmp_path, replicas_ack=1, replicas_ack_timeout_ms=200)
        graph = _graph(n=1)
        run_id, _ = store.runs.create_run(graph)  # both confirm
        token = _begin(store, run_id).token
        assert stalled.proc is not None
        os.kill(stalled.proc.pid, signal.SIGSTOP)
        try:
            with pytest.raises(NotReplicated, match="1 of 2 replicas confirmed it"):
                store.runs.create_run(_graph("half-confirmed"))
            request = CommitRequest(run_id, graph, "s0", State.SUCCEEDED, token=token, output_json="1")
            assert store.transitions.finish(request).replication == Replication(1, 2)
            # sent again: ALREADY wrote nothing; the replicated mark's write is what WAIT measures
            again = store.transitions.finish(request)
            assert again.verdict is CommitVerdict.ALREADY and again.replication == Replication(1, 2)
            redis.Redis.from_url(primary.url).client_kill_filter(addr=link)  # what repl-timeout does
            deadline = time.monotonic() + 5
            while _online(primary) != 1:
                assert time.monotonic() < deadline, "the primary kept the stalled replica"
                time.sleep(0.05)
            again = store.transitions.finish(request)
            assert again.verdict is CommitVerdict.ALREADY and again.replication == Replication(1, 1)
            store.runs.create_run(_graph("confirmed"))
        finally:
            os.kill(stalled.proc.pid, signal.SIGCONT)
    acks = (tmp_path / "acks.jsonl").read_text()
    assert acks.count('"created":true') == 2  # the first run and "confirmed", not "half-confirmed"
