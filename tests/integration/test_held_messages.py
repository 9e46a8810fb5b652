"""A stage's message in a worker's hands is recorded by that worker alone (broker.py): not in
kombu's unacknowledged hash, but in the worker's heartbeat; a warm shutdown puts it back on its
queue, for the next worker to run, and so does the worker itself once Redis is back after a crash."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from orchestration.fleet.embedded import RedisServer
from orchestration.fleet.health import queue_reports
from orchestration.language.validation import validate_data

from .conftest import Cluster, pipeline, wait_until

# a retry delay below the threshold is a broker countdown: the message waits in the worker's hands
HOLDING = {"CHORDFLOW_DELAY_SET_THRESHOLD_S": "60", "CHORDFLOW_HEARTBEAT_S": "0.5"}


def _held(cluster, host: str) -> dict:
    """What the heartbeat of the worker started as `host` says it holds."""
    for name, info in cluster.client.store.fleet.live_workers().items():
        if name.split("/")[0] == host:
            return info.get("held", {})
    return {}


def _retried_once(delay: str) -> dict:
    """One stage that fails its first attempt and is retried after `delay`."""
    return pipeline(
        "held",
        {
            "id": "flaky",
            "uses": "test.timed_flaky",
            "params": {"fail_times": 1},
            "retry": {"max_attempts": 2, "backoff": "fixed", "delay": delay},
        },
    )


def test_a_held_stage_message_is_in_the_heartbeat_and_goes_back_on_a_warm_shutdown(bare_cluster):
    cluster = bare_cluster
    holder = cluster.start_worker(hostname="holder", concurrency=1, env=HOLDING)
    handle = cluster.client.submit(validate_data(_retried_once("12s")))
    wait_until(lambda: cluster.client.status(handle.run_id)["stages"]["flaky"]["state"] == "retrying", 30)

    # While its retry counts down in the worker: the worker says it holds it, kombu's hash does not
    wait_until(lambda: _held(cluster, "holder") == {"cpu": 1}, 10)
    assert cluster.redis.hlen("unacked") == 0 and cluster.redis.zcard("unacked_index") == 0
    assert cluster.redis.llen("cpu") == 0
    workers = cluster.client.store.fleet.live_workers()
    cpu = next(q for q in queue_reports(cluster.client.store, cluster.redis, workers) if q.name == "cpu")
    assert cpu.delivered == 1  # what `chordflow fleet` shows as delivered

    # When that worker stops (warm): the message is back on its queue, and nothing else is
    holder.stop()
    assert cluster.redis.llen("cpu") == 1
    assert cluster.redis.hlen("unacked") == 0

    # Then another worker runs the retry, and the stage commits once, on its second attempt
    cluster.start_worker(hostname="next", concurrency=1, env=HOLDING)
    result = handle.wait(timeout=90)
    assert result.status == "succeeded"
    assert result.outputs["flaky"] == 2
    assert result.stage_results["flaky"]["attempts"] == 2
    assert cluster.redis.llen(f"test:times:{handle.run_id}:flaky") == 2  # two attempts ran, no more
    assert cluster.terminal_commits(handle.run_id) == {"flaky": 1}


@pytest.fixture
def durable_cluster(tmp_path):
    """A Redis whose AOF is fsync'd at every write, so a kill -9 loses nothing but the process."""
    server = RedisServer(appendonly=True, extra=("--appendfsync", "always")).start()
    cluster = Cluster(server, tmp_path)
    try:
        yield cluster
    finally:
        cluster.stop()
        server.stop()


def test_a_held_stage_message_goes_back_once_a_crashed_redis_is_back(durable_cluster):
    cluster = durable_cluster
    worker = cluster.start_worker(hostname="survivor", concurrency=1, env=HOLDING)
    handle = cluster.client.submit(validate_data(_retried_once("8s")))
    wait_until(lambda: _held(cluster, "survivor") == {"cpu": 1}, 30)  # its retry counts down in the worker
    assert cluster.redis.llen("cpu") == 0 and cluster.redis.hlen("unacked") == 0

    # When Redis dies (kill -9) and comes back: no Redis has that message, only the worker's memory
    assert cluster.server.proc is not None
    cluster.server.proc.kill()
    cluster.server.proc.wait()
    time.sleep(2.0)
    cluster.server.start()

    # Then the worker puts it back and runs it: the stage commits once, on its second attempt
    result = handle.wait(timeout=90)
    assert result.status == "succeeded"
    assert result.stage_results["flaky"]["attempts"] == 2
    assert cluster.redis.llen(f"test:times:{handle.run_id}:flaky") == 2
    assert cluster.terminal_commits(handle.run_id) == {"flaky": 1}
    assert worker.proc.poll() is None
    assert "broker: restored unacknowledged message" in Path(worker.log_path).read_text(errors="replace")
