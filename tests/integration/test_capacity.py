"""Capacity you can trust (engine/limits.py), end to end: a real redis-server, real worker processes.

Every test reads what a user would: the times its stages ran (recorded by the stage, `test.span`),
the GPUs each got, the times the run's event stream gives each start (Redis's clock), and that
every run ends with every stage committed once.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import time

import pytest

from orchestration.engine.placement import QueueUnserved
from orchestration.language.validation import validate_data

from .conftest import pipeline, wait_until

pytestmark = pytest.mark.timeout(240)


def spans(cluster, tag: str) -> list[dict]:
    return sorted(
        (json.loads(raw) for raw in cluster.redis.lrange(f"test:{tag}", 0, -1)), key=lambda s: s["start"]
    )


def overlap(a: dict, b: dict) -> bool:
    return a["start"] < b["end"] and b["start"] < a["end"]


def peak(records: list[dict]) -> int:
    """The most spans running at one moment."""
    edges = sorted([(s["start"], 1) for s in records] + [(s["end"], -1) for s in records])
    now = best = 0
    for _, step in edges:
        now += step
        best = max(best, now)
    return best


def starts(cluster, run_id: str) -> list[float]:
    """When each attempt began, by the run's event stream (Redis's clock, the one limits use)."""
    out = []
    for _, fields in cluster.redis.xrange(f"{cluster.settings.key_prefix}:run:{run_id}:events"):
        if fields.get("kind") == "stage" and fields.get("state") == "running":
            out.append(float(fields["t"]))
    return sorted(out)


def span_stage(sid: str, tag: str, seconds: float = 1.0, **fields) -> dict:
    return {"id": sid, "uses": "test.span", "params": {"seconds": seconds, "tag": tag}, **fields}


def submit(cluster, data: dict, **kwargs):
    return cluster.client.submit(validate_data(data), **kwargs)


def assert_committed_once(cluster, run_id: str, stage_ids) -> None:
    commits = cluster.terminal_commits(run_id)
    assert {sid: commits.get(sid) for sid in stage_ids} == {sid: 1 for sid in stage_ids}


def test_a_two_gpu_worker_runs_two_one_gpu_stages_with_their_own_devices_and_a_two_gpu_stage_alone(
    bare_cluster,
):
    c = bare_cluster
    worker = c.start_worker(queues=("gpu",), concurrency=3, hostname="gpu2", gpus=2)
    try:
        data = pipeline(
            "gpus",
            span_stage("one_a", "gpu2", 1.5, resources={"gpu": 1}),
            span_stage("one_b", "gpu2", 1.5, resources={"gpu": 1}),
            span_stage("both", "gpu2", 1.0, resources={"gpu": 2}),
        )
        result = c.run(data, timeout=90)
        assert result.status == "succeeded", result
        got = {s["stage"]: s for s in spans(c, "gpu2")}
        assert set(got) == {"one_a", "one_b", "both"}
        a, b, both = got["one_a"], got["one_b"], got["both"]
        assert overlap(a, b), (a, b)  # the two one-GPU stages ran at once ...
        assert {a["cuda"], b["cuda"]} == {"0", "1"}  # ... each on its own GPU
        assert a["gpus"] == [a["cuda"]]
        assert not overlap(both, a) and not overlap(both, b)  # the two-GPU stage waited for both
        assert both["cuda"] == "0,1"
        assert_committed_once(c, result.run_id, ["one_a", "one_b", "both"])
    finally:
        worker.stop()


def test_a_one_gpu_worker_never_runs_two_gpu_stages_and_a_two_gpu_stage_waits_there(bare_cluster):
    c = bare_cluster
    # three stage processes, one GPU: only the ledger keeps the GPU stages apart
    worker = c.start_worker(queues=("gpu",), concurrency=3, hostname="gpu1", gpus=1)
    try:
        data = pipeline(
            "one-gpu",
            *[span_stage(f"s{i}", "gpu1", 0.8, resources={"gpu": 1}) for i in range(3)],
            span_stage("big", "gpu1", 0.1, resources={"gpu": 2}),
        )
        # `big` fits no live worker: submit would refuse it; told not to check, it warns
        with pytest.warns(QueueUnserved, match="stage 'big' asks for 2 GPUs"):
            handle = submit(c, data, check_capacity=False)
        key = f"{c.settings.key_prefix}:run:{handle.run_id}:stage"
        wait_until(lambda: all(c.redis.hget(f"{key}:s{i}", "state") == "succeeded" for i in range(3)), 60)
        records = spans(c, "gpu1")
        assert len(records) == 3 and peak(records) == 1, records
        assert all(r["cuda"] == "0" for r in records)
        # the two-GPU stage is not lost, not run, not spinning: it waits, and says why
        state = c.redis.hget(f"{c.settings.key_prefix}:run:{handle.run_id}:states", "big")
        waiting = c.redis.hget(f"{key}:big", "waiting")
        assert state == "queued" and waiting.startswith("capacity gpu: needs 2 GPU"), (state, waiting)
        begins = [f for _, f in c.redis.xrange(f"{c.settings.key_prefix}:run:{handle.run_id}:events")]
        assert not any(f.get("stage") == "big" and f.get("state") == "running" for f in begins)
        assert c.client.cancel(handle.run_id) == "cancelled"
    finally:
        worker.stop()


def test_three_48_gb_stages_never_overlap_on_a_64_gb_worker(bare_cluster):
    c = bare_cluster
    worker = c.start_worker(queues=("highmem",), concurrency=3, hostname="mem64", memory_gb=64)
    try:
        data = pipeline(
            "memory", *[span_stage(f"m{i}", "mem64", 0.7, resources={"memory_gb": 48}) for i in range(3)]
        )
        result = c.run(data, timeout=90)
        assert result.status == "succeeded", result
        records = spans(c, "mem64")
        assert len(records) == 3
        for earlier, later in itertools.pairwise(records):
            assert later["start"] >= earlier["end"], records  # recorded start and end times
        assert_committed_once(c, result.run_id, ["m0", "m1", "m2"])
    finally:
        worker.stop()


def test_a_pool_of_two_holds_across_two_workers_and_two_runs(bare_cluster):
    c = bare_cluster
    workers = [c.start_worker(queues=("cpu",), concurrency=2, hostname=f"pool{i}") for i in range(2)]
    try:
        data = pipeline(
            "pooled",
            *[span_stage(f"p{i}", "pool2", 0.6, pool="llm") for i in range(5)],
            pools={"llm": 2},
        )
        handles = [submit(c, data), submit(c, data)]
        results = [h.wait(timeout=120) for h in handles]
        assert [r.status for r in results] == ["succeeded", "succeeded"], results
        records = spans(c, "pool2")
        assert len(records) == 10
        assert peak(records) == 2, records  # never more than 2 at once, and the pool was used
        assert {r["host"] for r in records} == {"pool0", "pool1"}
        for r in results:
            assert_committed_once(c, r.run_id, [f"p{i}" for i in range(5)])
        assert c.redis.zcard(f"{c.settings.key_prefix}:limit:pool:llm:holds") == 0  # nothing leaked
    finally:
        for w in workers:
            w.stop()


def test_a_rate_limit_of_5_per_second_spaces_20_calls_across_two_workers(bare_cluster):
    c = bare_cluster
    workers = [c.start_worker(queues=("cpu",), concurrency=2, hostname=f"rate{i}") for i in range(2)]
    try:
        data = pipeline(
            "rated",
            *[span_stage(f"r{i}", "rate5", 0.05) for i in range(20)],
            rate_limits={"test.span": "5/s"},
        )
        result = c.run(data, timeout=120)
        assert result.status == "succeeded", result
        began = starts(c, result.run_id)
        assert len(began) == 20
        assert began[-1] - began[0] >= 3.8 - 1e-6, began  # times in ms as floats: allow rounding
        for i, t in enumerate(began):  # burst 1: no window of one second holds more than 5 starts
            assert sum(1 for u in began[i:] if u < t + 1.0) <= 5, began
        assert {r["host"] for r in spans(c, "rate5")} == {"rate0", "rate1"}
        assert_committed_once(c, result.run_id, [f"r{i}" for i in range(20)])
    finally:
        for w in workers:
            w.stop()


def test_a_pool_slot_held_by_a_sigkilled_worker_comes_back_within_a_lease(bare_cluster):
    c = bare_cluster
    lease_s = 4.0
    env = {"CHORDFLOW_LEASE_S": str(lease_s), "CHORDFLOW_HEARTBEAT_S": "1"}
    doomed = c.start_worker(queues=("cpu",), concurrency=2, hostname="doomed", env=env)
    try:
        # the first attempt sleeps long (its worker is killed meanwhile); the next one is quick
        holder = span_stage("holder", "killed", 0.2, pool="solo")
        holder["params"]["first_attempt_seconds"] = 60
        first = submit(c, pipeline("killed-holder", holder, pools={"solo": 1}))
        stage_key = f"{c.settings.key_prefix}:run:{first.run_id}:stage"
        wait_until(lambda: c.redis.hget(f"{stage_key}:holder", "state") == "running", 30)
        second = submit(
            c, pipeline("killed-waiter", span_stage("waiter", "killed", 0.2, pool="solo"), pools={"solo": 1})
        )
        waiter_key = f"{c.settings.key_prefix}:run:{second.run_id}:stage:waiter"
        wait_until(lambda: c.redis.hget(waiter_key, "waiting") == "pool solo 1/1", 30)
        holds = f"{c.settings.key_prefix}:limit:pool:solo:holds"
        assert c.redis.zcard(holds) == 1
        os.killpg(doomed.proc.pid, signal.SIGKILL)  # the worker holding the slot, at once
        doomed.proc.wait()
        killed_at = time.monotonic()
        survivor = c.start_worker(queues=("cpu",), concurrency=2, hostname="survivor", env=env, wait=False)
        try:

            def live_holders() -> int:
                seconds, micros = c.redis.time()
                return c.redis.zcount(holds, f"({seconds * 1000 + micros // 1000}", "+inf")

            wait_until(lambda: live_holders() == 0, timeout=lease_s + 5, interval=0.02)
            assert time.monotonic() - killed_at <= lease_s + 0.5  # the slot is back within one lease
            results = [first.wait(timeout=90), second.wait(timeout=90)]
            assert [r.status for r in results] == ["succeeded", "succeeded"], results
            records = spans(c, "killed")
            assert sorted(r["stage"] for r in records) == ["holder", "waiter"]
            assert peak(records) == 1
            assert_committed_once(c, first.run_id, ["holder"])
            assert_committed_once(c, second.run_id, ["waiter"])
            assert c.redis.zcard(holds) == 0
        finally:
            survivor.stop()
    finally:
        doomed.stop()
