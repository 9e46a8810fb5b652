"""What people see of capacity, on a real Redis: `submit` refuses a stage no live worker can hold
(and writes nothing), `--no-check` queues it; `health` reports stages waiting for capacity per queue
and which can never be placed; `status` shows what a waiting stage waits for; `plan` shows each
stage's limits, and the pools full right now.

The worker here is a heartbeat only (the worker registry, written as a worker writes it): no worker
process runs, so what the engine writes when a stage waits is written by the test, as the engine
writes it (engine/lua/_limits.lua)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from orchestration.engine.keys import Keys
from orchestration.fleet.health import queue_lists
from orchestration.language.validation import validate_data

from .conftest import ROOT, pipeline, wait_until

CHORDFLOW = [sys.executable, "-m", "orchestration"]
NOOP = {"name": "noop", "ref": "noop", "version": "1", "queue": None, "retry": None}


def chordflow(url: str, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHORDFLOW_")}
    env.update(PYTHONPATH=str(ROOT), CHORDFLOW_REDIS_URL=url, COLUMNS="200")  # no table cell wraps
    return subprocess.run(
        [*CHORDFLOW, *args], check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def gpu_box(bare_cluster):
    """A live worker with 2 GPUs and 32 GB serving every queue (its heartbeat, fresh for this test)."""
    bare_cluster.client.store.fleet.publish_worker(
        "gpu-box/gpu",
        {
            "queues": ["cpu", "gpu", "highmem"],
            "machine": {"cpus": 4, "memory_gb": 32.0, "gpus": 2},
            "capacity": {"gpus": 2, "devices": ["0", "1"], "memory_gb": 32.0, "slots": 2},
            "types": [NOOP],
        },
    )
    yield bare_cluster
    bare_cluster.client.store.fleet.remove_worker("gpu-box/gpu")


@pytest.fixture
def train_file(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text(
        yaml.safe_dump(pipeline("train-big", {"id": "train", "uses": "noop", "resources": {"gpu": 4}}))
    )
    return path


def test_submit_refuses_a_stage_no_live_worker_can_hold_and_writes_nothing(gpu_box, train_file):
    # Given a live worker with 2 GPUs on queue gpu, and everything in Redis now
    before = set(gpu_box.redis.keys("*"))

    # When a pipeline whose stage asks for 4 GPUs is submitted
    done = chordflow(gpu_box.server.url, "submit", str(train_file))

    # Then it is refused as invalid input, saying why and how to queue it anyway
    assert done.returncode == 2, done.stdout + done.stderr
    assert (
        "stage 'train' asks for 4 GPUs; the largest live worker serving queue 'gpu' has 2 "
        "(submit with --no-check to queue it anyway)"
    ) in done.stderr
    # and nothing was written: no run, no message
    assert set(gpu_box.redis.keys("*")) == before
    assert gpu_box.redis.zcard(Keys().runs()) == 0 and gpu_box.redis.llen("gpu") == 0

    # With --json the refusal is the usual error document
    as_json = chordflow(gpu_box.server.url, "submit", str(train_file), "--json")
    assert as_json.returncode == 2
    assert json.loads(as_json.stdout)["error"] == "NoCapacity"


def test_no_check_queues_it_and_health_reports_it_unplaceable(gpu_box, train_file):
    # Given the refused pipeline submitted with --no-check
    done = chordflow(gpu_box.server.url, "submit", str(train_file), "--no-check")
    assert done.returncode == 0, done.stdout + done.stderr
    run_id = done.stdout.strip().splitlines()[-1]
    assert gpu_box.client.store.runs.run_status(run_id) == "running"
    # with a warning instead of the refusal
    assert (
        "warning: stage 'train' asks for 4 GPUs; the largest live worker serving queue 'gpu' has 2: "
        "it waits until a worker that can hold it joins"
    ) in done.stderr

    # and the engine parked it in its queue's capacity class when it began, 5 s ago, next to a stage
    # that fits and only waits for a GPU to be free
    keys = Keys()
    now_ms = int(gpu_box.client.store.runs.server_time() * 1000)
    too_big = {"p": "[]", "run": run_id, "stage": "train", "item": None, "gpu": 4, "memory_gb": None}
    fits = {"p": "[]", "run": "r-other", "stage": "embed", "item": 3, "gpu": 1, "memory_gb": 16.0}
    gpu_box.redis.zadd(keys.capacity_waiting("gpu"), {json.dumps(too_big): now_ms - 5000})
    gpu_box.redis.zadd(keys.capacity_waiting("gpu"), {json.dumps(fits): now_ms - 1000})
    try:
        # When health runs
        code, report = _health_json(gpu_box.server.url)
        text = chordflow(gpu_box.server.url, "health")

        # Then it counts both as waiting, the 4-GPU one as unplaceable, and is unhealthy for it
        gpu = report["capacity"]["gpu"]
        assert (gpu["waiting"], gpu["unplaceable"]) == (2, 1)
        assert gpu["oldest_s"] >= 4.0
        assert gpu["examples"] == [
            f"{run_id}/train asks 4 GPU (unplaceable)",
            "r-other/embed[3] asks 1 GPU, 16 GB",
        ]
        assert report["capacity"]["cpu"] == {
            "waiting": 0,
            "unplaceable": 0,
            "oldest_s": None,
            "examples": [],
            "served": True,
        }
        assert code == 1 and not report["healthy"]
        assert any(
            "queue 'gpu' has 1 stage(s) waiting for more GPUs or memory" in p and f"{run_id}/train" in p
            for p in report["problems"]
        )
        assert text.returncode == 1
        assert "capacity gpu: 2 waiting for GPUs or memory (1 unplaceable)" in text.stdout
        assert "UNHEALTHY: queue 'gpu' has 1 stage(s) waiting" in text.stderr

        # and a stage that fits, waiting alone, is healthy
        gpu_box.redis.zrem(keys.capacity_waiting("gpu"), json.dumps(too_big))
        code, report = _health_json(gpu_box.server.url)
        assert (report["capacity"]["gpu"]["waiting"], report["capacity"]["gpu"]["unplaceable"]) == (1, 0)
        assert code == 0, report["problems"]
    finally:
        gpu_box.redis.delete(keys.capacity_waiting("gpu"))
        gpu_box.client.cancel(run_id)
        gpu_box.redis.delete(*queue_lists("gpu"))


def _health_json(url: str) -> tuple[int, dict]:
    done = chordflow(url, "health", "--json")
    return done.returncode, json.loads(done.stdout)


def test_status_shows_what_a_waiting_stage_waits_for(gpu_box):
    # Given a queued stage the engine parked behind a full pool
    spec = validate_data(pipeline("pooled", {"id": "ask", "uses": "noop"}))
    run_id = gpu_box.client.submit(spec).run_id
    keys = Keys()
    since = gpu_box.client.store.runs.server_time() - 3
    gpu_box.redis.hset(keys.stage(run_id, "ask"), mapping={"waiting": "pool llm 4/4", "waiting_since": since})
    try:
        # When its status is read
        text = chordflow(gpu_box.server.url, "status", run_id)
        as_json = chordflow(gpu_box.server.url, "status", run_id, "--json")

        # Then the stage shows as waiting for the pool, and --json carries the label and since when
        assert text.returncode == 0, text.stderr
        assert "waiting (pool llm 4/4)" in text.stdout
        stage = json.loads(as_json.stdout)["stages"]["ask"]
        assert stage["state"] == "queued"
        assert stage["waiting"]["label"] == "pool llm 4/4" and stage["waiting"]["items"] is None
        assert stage["waiting"]["since_at"].endswith("Z")

        # and once admitted (the engine deletes the field), it is plainly queued again
        gpu_box.redis.hdel(keys.stage(run_id, "ask"), "waiting", "waiting_since")
        stage = json.loads(chordflow(gpu_box.server.url, "status", run_id, "--json").stdout)["stages"]["ask"]
        assert stage["waiting"] is None
    finally:
        gpu_box.client.cancel(run_id)
        gpu_box.redis.delete(*queue_lists("cpu"))


def test_status_shows_a_fan_out_whose_items_wait(gpu_box):
    # Given a running fan-out, two of whose items the engine parked behind a full pool
    spec = validate_data(pipeline("fanned", {"id": "fan", "uses": "noop", "matrix": {"x": [1, 2, 3]}}))
    run_id = gpu_box.client.submit(spec).run_id
    wait_until(lambda: gpu_box.client.store.runs.items_total(run_id, "fan") == 3)
    keys = Keys()
    now = gpu_box.client.store.runs.server_time()
    gpu_box.redis.hset(
        keys.items(run_id, "fan"), mapping={"0:waiting": "pool llm 4/4", "2:waiting": "pool llm 4/4"}
    )
    gpu_box.redis.hset(keys.stage(run_id, "fan"), mapping={"waiting": "pool llm 4/4", "waiting_since": now})
    try:
        # When its status is read, with the items
        text = chordflow(gpu_box.server.url, "status", run_id)
        data = json.loads(chordflow(gpu_box.server.url, "status", run_id, "--items", "--json").stdout)

        # Then the stage is running, with how many items wait and for what
        assert text.returncode == 0, text.stderr
        assert "running (2 items waiting: pool llm 4/4)" in text.stdout
        stage = data["stages"]["fan"]
        assert stage["state"] == "running" and stage["waiting"]["items"] == 2
        # and, with --items, each waiting item what it waits for
        assert {i["index"]: i["waiting"] for i in stage["items"] if i["waiting"]} == {
            0: "pool llm 4/4",
            2: "pool llm 4/4",
        }
    finally:
        gpu_box.client.cancel(run_id)
        gpu_box.redis.delete(*queue_lists("cpu"))


def test_plan_shows_each_stages_limits_and_the_pools_full_now(gpu_box, tmp_path):
    # Given a file with a pool of 2, and two live holders of it (and one whose lease ran out)
    path = tmp_path / "pooled.yaml"
    data = pipeline(
        "pooled",
        {"id": "ask", "uses": "noop", "pool": "llm"},
        {"id": "train", "uses": "noop", "resources": {"gpu": 2}},
        pools={"llm": 2},
        max_parallel=3,
    )
    path.write_text(yaml.safe_dump(data))
    holds = Keys().limit_holds("pool:llm")
    now_ms = int(gpu_box.client.store.runs.server_time() * 1000)
    gpu_box.redis.zadd(
        holds, {"r1|a|#t1": now_ms + 60_000, "r2|a|#t2": now_ms + 60_000, "r0|a|#t0": now_ms - 1}
    )
    try:
        # When it is planned
        as_json = json.loads(chordflow(gpu_box.server.url, "plan", str(path), "--json").stdout)
        text = chordflow(gpu_box.server.url, "plan", str(path))

        # Then each stage lists its limits, and the full pool as what it would wait for now
        stages = {s["id"]: s for s in as_json["stages"]}
        assert stages["ask"]["limits"] == ["pool llm (2)"] and stages["ask"]["waits"] == ["pool llm 2/2"]
        assert stages["train"]["limits"] == ["gpu 2"] and stages["train"]["waits"] == []
        assert as_json["max_parallel"] == 3
        assert text.returncode == 0, text.stderr
        assert "pool llm (2); waits: pool llm 2/2" in text.stdout
        assert "max_parallel: at most 3 stages of a run at once" in text.stdout

        # and once a holder is gone, nothing waits
        gpu_box.redis.zrem(holds, "r1|a|#t1")
        as_json = json.loads(chordflow(gpu_box.server.url, "plan", str(path), "--json").stdout)
        assert {s["id"]: s["waits"] for s in as_json["stages"]} == {"ask": [], "train": []}
    finally:
        gpu_box.redis.delete(holds)
