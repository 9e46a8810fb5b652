"""The reaper's anti-entropy sweep (engine/antientropy.py): a queued or retrying stage, or a fan-out
item, whose message no one holds is sent again, and the run ends with every stage committed once.

Each case loses a message the way a fault does, on a real redis-server and real workers: the
broker's queue emptied after the submit confirmed its sends (a message taken by a consumer that
died before kombu recorded it, or a failover to a replica that missed it), and a retry whose
countdown message never reached the broker.
"""

from __future__ import annotations

from pathlib import Path

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
    assert sorted(cluster.client.store.items(fanned, "fan")) == [0, 1, 2, 3, 4]
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
    reads = cluster.client.store.missing_messages()
    graph = cluster.client.store.graph(handle.run_id)
    now_ms = int(cluster.client.store.server_time() * 1000)
    suspects = reads.suspects(handle.run_id, graph, now_ms, 0)
    assert [s.unit for s in suspects] == [(handle.run_id, "a", None)]
    assert (handle.run_id, "a", None) in reads.present(["cpu"])
