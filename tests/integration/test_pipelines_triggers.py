"""`triggers: [{on_success_of: A}]`: each successful run of A submits exactly one run of B, served
by the hook sender of every worker (two workers here, so two senders compete for each run's end);
a failed run of A submits none; a run's end delivered twice, or by a second worker after the first
died mid-delivery, still submits one. Real Redis, real worker processes, nothing else listening
for a run's end (the workers import no test hooks, except the one killed on purpose)."""

from __future__ import annotations

import json
import time

import pytest

from orchestration.language.validation import load_pipeline

from .conftest import wait_until
from .pipelines_support import FAILING, chordflow, chordflow_json, plain_worker, runs_of, write

QUICK_CLAIM = {"CHORDFLOW_HOOK_CLAIM_IDLE_S": "2"}


@pytest.fixture(scope="module")
def fleet(bare_cluster):
    plain_worker(bare_cluster, "trig-1")
    plain_worker(bare_cluster, "trig-2")
    return bare_cluster


def hooks_drained(cluster) -> bool:
    """Every run end in the outbox delivered and acknowledged."""
    return cluster.redis.xlen(f"{cluster.settings.key_prefix}:hooks") == 0


def test_three_successes_of_a_make_three_runs_of_b_and_a_failure_none(fleet, tmp_path):
    a = write(tmp_path, "trig-a")
    a_failing = write(tmp_path, "trig-a", FAILING)
    b = write(
        tmp_path,
        "trig-b",
        depends_on=[{"pipeline": "trig-a", "max_age": "1h"}],
        triggers=[{"on_success_of": "trig-a"}],
    )
    for path in (a, b):
        assert chordflow(fleet, "pipelines", "add", path).returncode == 0

    # Given three successful runs of A
    a_runs = [fleet.client.submit(load_pipeline(a)).wait(timeout=120) for _ in range(3)]
    assert all(result.success for result in a_runs)

    # Then three runs of B, one per run of A, each saying which run triggered it
    wait_until(lambda: len(runs_of(fleet, "trig-b")) >= 3, 60)
    wait_until(lambda: all(r["status"] == "succeeded" for r in runs_of(fleet, "trig-b")), 60)
    wait_until(lambda: hooks_drained(fleet), 60)
    time.sleep(2)  # nothing else arrives late
    b_runs = runs_of(fleet, "trig-b")
    assert len(b_runs) == 3
    assert sorted(r["triggered_by"] for r in b_runs) == sorted(result.run_id for result in a_runs)
    first = b_runs[0]["run_id"]
    status = chordflow_json(fleet, "status", first)
    assert status["origin"]["triggered_by"] == {"run_id": b_runs[0]["triggered_by"], "pipeline": "trig-a"}
    shown = chordflow(fleet, "status", first).stdout
    assert f"triggered by run {b_runs[0]['triggered_by']} of trig-a" in shown

    # When A fails: no run of B
    failed = fleet.client.submit(load_pipeline(a_failing)).wait(timeout=120)
    assert not failed.success
    wait_until(lambda: hooks_drained(fleet), 60)
    time.sleep(2)
    assert len(runs_of(fleet, "trig-b")) == 3

    # When a run's end is delivered again (at least once): still one run of B for it
    again = {"kind": "run_complete", "run_id": a_runs[0].run_id, "pipeline": "trig-a", "status": "succeeded"}
    fleet.redis.xadd(f"{fleet.settings.key_prefix}:hooks", {"e": json.dumps(again)})
    wait_until(lambda: hooks_drained(fleet), 60)
    time.sleep(1)
    assert len(runs_of(fleet, "trig-b")) == 3


def test_a_worker_dying_mid_delivery_leaves_one_triggered_run(bare_cluster, tmp_path):
    cluster = bare_cluster
    a = write(tmp_path, "trig-slow-a")
    b = write(tmp_path, "trig-slow-b", triggers=[{"on_success_of": "trig-slow-a"}])
    for path in (a, b):
        assert chordflow(cluster, "pipelines", "add", path).returncode == 0
    for worker in list(cluster.workers):  # only the worker that will die delivers at first
        worker.stop()
    dies = plain_worker(
        cluster,
        "trig-dies",
        imports=("tests.pipelines_hooks",),  # holds the first delivery of trig-slow-a's end
        env={**QUICK_CLAIM, "CHORDFLOW_HOOK_TIMEOUT_S": "120", "TEST_HOLD_S": "120"},
        concurrency=1,
    )

    # Given a run of A whose end the dying worker's sender took: it submitted B, then holds the event
    a_run = cluster.client.submit(load_pipeline(a)).wait(timeout=120)
    assert a_run.success
    held = f"test:pipelines:delivered:{a_run.run_id}"
    wait_until(lambda: cluster.redis.get(held) == "1", 60)
    wait_until(lambda: [r["status"] for r in runs_of(cluster, "trig-slow-b")] == ["succeeded"], 60)

    # When the worker dies before acknowledging the event, and another worker takes it over
    dies.kill()
    plain_worker(cluster, "trig-survivor", imports=("tests.pipelines_hooks",), env=QUICK_CLAIM)
    wait_until(lambda: cluster.redis.get(held) == "2", 60)  # delivered a second time
    wait_until(lambda: hooks_drained(cluster), 60)

    # Then there is still exactly one run of B for that run of A
    time.sleep(2)
    b_runs = runs_of(cluster, "trig-slow-b")
    assert [(r["triggered_by"], r["status"]) for r in b_runs] == [(a_run.run_id, "succeeded")]
