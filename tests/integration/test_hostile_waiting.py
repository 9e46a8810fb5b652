"""An ended run leaves nothing waiting (issue 20, point 4): cancelling a run, or its failing, takes
its stages out of the capacity classes, the limits' waiting sets and the delay set; the reaper's
sweep drops any waiter of an ended run it finds. Real redis-server, real worker processes; each
test reads what `health` and Redis show afterwards."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from orchestration.engine.keys import Keys
from orchestration.engine.placement import QueueUnserved
from orchestration.language.validation import validate_data

from .conftest import ROOT, pipeline, wait_until

pytestmark = pytest.mark.timeout(240)
CHORDFLOW = [sys.executable, "-m", "orchestration"]


def chordflow(url: str, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHORDFLOW_")}
    env.update(PYTHONPATH=str(ROOT), CHORDFLOW_REDIS_URL=url, COLUMNS="200")
    return subprocess.run(
        [*CHORDFLOW, *args], check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


def members_of(cluster, key: str, run_id: str) -> list[str]:
    return [m for m in cluster.redis.zrange(key, 0, -1) if run_id in m]


def health(cluster) -> tuple[int, dict]:
    done = chordflow(cluster.server.url, "health", "--json")
    return done.returncode, json.loads(done.stdout)


@pytest.fixture(scope="module")
def fleet(bare_cluster):
    """One worker with 2 GPUs serving every queue; its reaper sweeps every tick."""
    bare_cluster.start_worker(queues=("cpu", "gpu", "highmem"), concurrency=3, hostname="two-gpus", gpus=2)
    return bare_cluster


def test_a_cancelled_four_gpu_stage_leaves_the_gpu_class_and_health_recovers(fleet, tmp_path):
    keys = Keys()
    path = tmp_path / "big.yaml"
    path.write_text(
        yaml.safe_dump(pipeline("too-big", {"id": "train", "uses": "noop", "resources": {"gpu": 4}}))
    )

    # Given a 4-GPU stage submitted with --no-check to a 2-GPU fleet, parked in the gpu class
    done = chordflow(fleet.server.url, "submit", str(path), "--no-check")
    assert done.returncode == 0, done.stderr
    run_id = done.stdout.strip().splitlines()[-1]
    wait_until(lambda: members_of(fleet, keys.capacity_waiting("gpu"), run_id), 60)
    code, report = health(fleet)
    assert code == 1 and report["capacity"]["gpu"]["unplaceable"] == 1

    # When it is cancelled
    cancelled = chordflow(fleet.server.url, "cancel", run_id)
    assert cancelled.returncode == 0, cancelled.stderr

    # Then nothing of it waits, and health is healthy again at once
    assert members_of(fleet, keys.capacity_waiting("gpu"), run_id) == []
    code, report = health(fleet)
    assert report["capacity"]["gpu"]["waiting"] == 0
    assert code == 0, report["problems"]
    assert fleet.client.store.runs.run_status(run_id) == "cancelled"


def test_a_failed_run_leaves_no_stage_waiting_for_capacity(fleet):
    keys = Keys()
    # Given a run whose 4-GPU stage waits while a parallel stage fails after a moment
    data = pipeline(
        "fails-while-waiting",
        {"id": "train", "uses": "noop", "resources": {"gpu": 4}},
        {"id": "broken", "uses": "fail", "params": {"times": -1}},
    )
    with pytest.warns(QueueUnserved, match="asks for 4 GPUs"):
        handle = fleet.client.submit(validate_data(data), check_capacity=False)

    # When the run fails
    result = handle.wait(timeout=120)
    assert result.status == "failed"

    # Then its 4-GPU stage no longer waits in the gpu class
    wait_until(lambda: not members_of(fleet, keys.capacity_waiting("gpu"), handle.run_id), 10)
    assert fleet.redis.hget(keys.stage(handle.run_id, "train"), "waiting") in (None, "")


def test_a_cancelled_run_leaves_no_pool_waiter_nor_reserved_rate_slot(fleet):
    keys = Keys()
    # Given a run with a pool of one held by a long stage (another waits for the pool) and a rate of
    # one a minute (a second stage holds a slot a minute ahead in the delay set). Both pool stages
    # are long: whichever begins first holds the pool (a pool process's first task builds its
    # connections first, so the order of the messages does not decide it)
    data = pipeline(
        "held-and-rated",
        {"id": "holder", "uses": "test.span", "params": {"seconds": 60, "tag": "w1"}, "pool": "one"},
        {"id": "queued", "uses": "test.span", "params": {"seconds": 60, "tag": "w1"}, "pool": "one"},
        {"id": "rated1", "uses": "test.record"},
        {"id": "rated2", "uses": "test.record"},
        pools={"one": 1},
        rate_limits={"test.record": "1/m"},
    )
    run_id = fleet.client.submit(validate_data(data)).run_id
    wait_until(lambda: members_of(fleet, keys.limit_waiting("pool:one"), run_id), 60)
    wait_until(lambda: members_of(fleet, keys.delayed(), run_id), 60)

    # When it is cancelled
    assert fleet.client.cancel(run_id) == "cancelled"

    # Then neither the pool's waiting set nor the delay set holds anything of it
    assert members_of(fleet, keys.limit_waiting("pool:one"), run_id) == []
    assert members_of(fleet, keys.delayed(), run_id) == []
    waiting = {
        fleet.redis.hget(keys.stage(run_id, s), "waiting") for s in ("holder", "queued", "rated1", "rated2")
    }
    assert waiting <= {None, ""}


def test_the_sweep_drops_a_waiter_whose_run_has_ended(fleet):
    keys = Keys()
    # Given a run that ended (cancelled) and a capacity waiter of it parked after its end (a begin
    # racing the cancel), as begin.lua parks one
    run_id = fleet.client.submit(
        validate_data(
            pipeline("ended", {"id": "a", "uses": "test.span", "params": {"seconds": 30, "tag": "w2"}})
        )
    ).run_id
    assert fleet.client.cancel(run_id) == "cancelled"
    who = {"p": json.dumps([run_id, "a", 1, None]), "run": run_id, "stage": "a", "item": None, "gpu": 4}
    fleet.redis.zadd(keys.capacity_waiting("gpu"), {json.dumps(who): 1})

    # Then the reaper's sweep drops it within a few ticks, and health recovers
    wait_until(lambda: not members_of(fleet, keys.capacity_waiting("gpu"), run_id), 30)
    assert health(fleet)[0] == 0
