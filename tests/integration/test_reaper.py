"""The reaper finishes what a dead submitter or dispatcher left half-done."""

from __future__ import annotations

from orchestration.graph.resolve import resolve
from orchestration.language.validation import validate_data

from .conftest import pipeline, wait_until

QUICK_REAPER = {"CHORDFLOW_OUTBOX_GRACE_S": "1"}


def test_a_run_whose_submitter_died_before_sending_is_dispatched(bare_cluster):
    cluster = bare_cluster
    cluster.start_worker(hostname="reaper-host", env=QUICK_REAPER)
    graph = resolve(
        validate_data(
            pipeline(
                "half-submitted",
                {"id": "a", "uses": "test.record"},
                {"id": "b", "uses": "test.record", "needs": ["a"]},
            )
        )
    )
    # The submitter stored the run and died before it sent a single message.
    run_id, created = cluster.client.store.runs.create_run(graph)
    assert created
    result = cluster.client.handle(run_id).wait(timeout=30)
    assert result.status == "succeeded"
    assert cluster.count(run_id, "a") == 1 and cluster.count(run_id, "b") == 1


def test_a_fan_out_whose_dispatcher_died_after_starting_it_completes(bare_cluster):
    cluster = bare_cluster
    store = cluster.client.store
    graph = resolve(
        validate_data(
            pipeline(
                "half-fanned",
                {"id": "each", "uses": "test.record", "matrix": {"n": [1, 2, 3, 4, 5]}, "max_concurrency": 2},
                {"id": "after", "uses": "noop", "needs": ["each"]},
            )
        )
    )
    run_id, _ = store.runs.create_run(graph)
    # The dispatcher started the fan-out (window of 2) and died before sending its items.
    assert store.transitions.start_fanout(run_id, "each", 5, 2, "cpu")
    result = cluster.client.handle(run_id).wait(timeout=30)
    assert result.status == "succeeded"
    assert result.outputs["each"] == [{"n": n} for n in range(1, 6)]
    assert cluster.count(run_id, "each") == 5


def test_a_worker_that_stops_hands_the_reaper_on_at_once(bare_cluster):
    """One worker reaps at a time, by a lock with a lease's TTL; a worker that stops gives it up, so
    the next one reaps from its next tick, not after the lease (15 s with nothing reaped)."""
    cluster = bare_cluster
    lock = cluster.client.store.keys.reaper_lock()
    for worker in cluster.workers:
        worker.stop()
    cluster.redis.delete(lock)  # what stopped workers before this change left
    first = cluster.start_worker(hostname="reaper-first")
    wait_until(lambda: cluster.redis.exists(lock))
    second = cluster.start_worker(hostname="reaper-second")
    first.stop()
    assert not cluster.redis.exists(lock)  # given up, not left to its TTL
    wait_until(lambda: cluster.redis.exists(lock), timeout=5)  # taken by the second worker
    second.stop()
    assert not cluster.redis.exists(lock)
