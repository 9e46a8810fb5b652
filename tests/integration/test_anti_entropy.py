"""The reaper's anti-entropy sweep (engine/antientropy.py): a queued or retrying stage, or a fan-out
item, whose message no one holds is sent again, and the run ends with every stage committed once.

Each case loses a message the way a fault does, on a real redis-server and real workers: the
broker's queue emptied after the submit confirmed its sends (a message taken by a consumer that
died before kombu recorded it, or a failover to a replica that missed it), and a retry whose
countdown message never reached the broker.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from orchestration.engine.stage_message import StageMessage
from orchestration.language.validation import validate_data
from orchestration.states import RunStatus, State

from .conftest import pipeline, wait_until

SWEEP = {"CHORDFLOW_SWEEP_S": "1", "CHORDFLOW_SWEEP_GRACE_S": "1.5"}


def _lost(cluster, data: dict) -> str:
    """Submit with no worker serving, then lose every message the submit sent."""
    handle = cluster.client.submit(validate_data(data), check_types=False)
    wait_until(lambda: cluster.redis.llen("cpu") > 0)
    cluster.redis.delete("cpu")
    assert cluster.redis.zcard(f"{cluster.settings.key_prefix}:outbox") == 0  # the sends were confirmed
    return handle.run_id


def test_stages_and_items_whose_messages_were_lost_are_sent_again(bare_cluster):
    cluster = bare_cluster
    chain = _lost(
        cluster,
        pipeline("lost-chain", {"id": "a", "uses": "noop"}, {"id": "b", "uses": "noop", "needs": ["a"]}),
    )
    fanned = _lost(
        cluster, pipeline("lost-items", {"id": "fan", "uses": "noop", "matrix": {"x": [1, 2, 3, 4, 5]}})
    )
    # a retry whose countdown message was never sent: the stage is `retrying`, due, with no message
    retried = cluster.client.submit(
        validate_data(pipeline("lost-retry", {"id": "r", "uses": "noop"})), check_types=False
    )
    wait_until(lambda: cluster.redis.llen("cpu") > 0)
    cluster.redis.delete("cpu")
    k = cluster.client.store.keys
    run_id = retried.run_id
    cluster.redis.hset(
        k.stage(run_id, "r"), mapping={"state": State.RETRYING, "attempt": 1, "retry_at": "1.000"}
    )
    cluster.redis.hset(k.states(run_id), "r", State.RETRYING)

    worker = cluster.start_worker(env=SWEEP)
    for rid in (chain, fanned, run_id):
        assert cluster.client.handle(rid).wait(timeout=30).status == RunStatus.SUCCEEDED
    assert cluster.terminal_commits(chain) == {"a": 1, "b": 1}
    assert cluster.terminal_commits(fanned) == {"fan": 1}
    assert sorted(cluster.client.store.runs.items(fanned, "fan")) == [0, 1, 2, 3, 4]
    assert cluster.client.status(run_id)["stages"]["r"]["attempts"] == 2  # sent as its next attempt
    log = Path(worker.log_path).read_text()
    assert "waits for a message no one holds; sending it again" in log
    # the ended runs leave the sweep's index of active runs
    wait_until(
        lambda: not cluster.redis.zrange(f"{cluster.settings.key_prefix}:runs:active", 0, -1), timeout=10
    )


def test_a_stage_whose_message_is_in_its_queue_is_not_sent_twice(bare_cluster):
    """A backlog is not a loss: the sweep finds the message in its queue and sends nothing."""
    cluster = bare_cluster
    for w in cluster.workers:
        w.stop()
    handle = cluster.client.submit(
        validate_data(pipeline("queued", {"id": "a", "uses": "noop"})), check_types=False
    )
    reads = cluster.client.store.missing
    graph = cluster.client.store.runs.graph(handle.run_id)
    now_ms = int(cluster.client.store.runs.server_time() * 1000)
    suspects = reads.suspects(handle.run_id, graph, now_ms, 0)
    assert [s.unit for s in suspects] == [(handle.run_id, "a", None)]
    present = reads.present(["cpu"], now_ms / 1000 - 60)
    assert suspects[0].found_in(present)


def test_a_message_a_dead_worker_took_long_ago_does_not_hide_a_loss(bare_cluster):
    """kombu keeps a message a dead worker took in its unacked hash for the visibility timeout (an
    hour): held longer than a lease and the grace, it no longer counts as in hand."""
    cluster = bare_cluster
    for w in cluster.workers:
        w.stop()
    cluster.redis.delete("cpu")  # what earlier tests left queued
    handle = cluster.client.submit(
        validate_data(pipeline("taken", {"id": "a", "uses": "noop"})), check_types=False
    )
    wait_until(lambda: cluster.redis.llen("cpu") > 0)
    text = cluster.redis.rpop("cpu")  # as kombu's consumer takes it: into unacked, by time taken
    cluster.redis.hset("unacked", "tag-1", json.dumps([json.loads(text), "", "cpu"]))
    store = cluster.client.store
    now_s = store.runs.server_time()
    reads = store.missing
    (suspect,) = reads.suspects(handle.run_id, store.runs.graph(handle.run_id), int(now_s * 1000), 0)
    cluster.redis.zadd("unacked_index", {"tag-1": now_s - 5})  # taken 5 s ago: in a worker's hands
    assert suspect.found_in(reads.present(["cpu"], now_s - 60))
    cluster.redis.zadd("unacked_index", {"tag-1": now_s - 3600})  # an hour ago, by a worker now gone
    assert not suspect.found_in(reads.present(["cpu"], now_s - 60))
    # and an older attempt's message does not stand for the next one's
    retrying = replace(suspect, message=StageMessage(handle.run_id, "a", 2))
    cluster.redis.zadd("unacked_index", {"tag-1": now_s - 5})
    assert not retrying.found_in(reads.present(["cpu"], now_s - 60))
    cluster.redis.delete("unacked", "unacked_index")


def test_an_ended_run_left_without_its_ttl_gets_it_from_the_sweep(bare_cluster):
    """`expire_run` takes a run off the active runs after giving its keys their TTL: a run still
    listed after its end lost that step (its worker died between the commit and the expiry, or
    `retry` removed the TTLs and then found nothing to reopen), and the sweep expires it."""
    cluster = bare_cluster
    for w in cluster.workers:
        w.stop()
    cluster.redis.delete("cpu")  # what earlier tests left queued
    cluster.start_worker(env=SWEEP)
    k = cluster.client.store.keys
    fanned = pipeline(
        "expired-late",
        {"id": "a", "uses": "noop"},
        {"id": "fan", "uses": "noop", "needs": ["a"], "matrix": {"x": [1, 2]}},
    )
    result = cluster.run(fanned)
    assert result.status == RunStatus.SUCCEEDED
    run_id = result.run_id
    keys = [key for key in k.run_keys(run_id, ["a", "fan"], {"fan"}) if cluster.redis.exists(key)]
    assert k.items(run_id, "fan") in keys and k.stage(run_id, "a") in keys
    active = f"{cluster.settings.key_prefix}:runs:active"

    def expired() -> bool:
        return (
            all(cluster.redis.ttl(key) > 0 for key in keys) and cluster.redis.zscore(active, run_id) is None
        )

    wait_until(expired)
    # a worker that died between the commit and the expiry
    for key in keys:
        cluster.redis.persist(key)
    cluster.redis.zadd(active, {run_id: 1})
    wait_until(expired, timeout=15)
    # a retry of a run that succeeded: its TTLs removed, then nothing to reopen
    assert cluster.client.retry(run_id).startswith("not retried")
    assert cluster.redis.ttl(k.run(run_id)) == -1 and cluster.redis.zscore(active, run_id) is not None
    wait_until(expired, timeout=15)
