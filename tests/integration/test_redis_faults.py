"""A worker rides out Redis faults and malformed messages: its process never ends.

One redis-server (AOF, fsync always, so a kill -9 loses no acknowledged write: what is tested here is
the worker, not Redis's durability) and one worker process for the module. Each test starts a run,
does harm while it runs, and checks that the run still ends `succeeded` and the worker's process
is the one that started (same PID, still running, no "Unrecoverable error" in its log).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from kombu import Exchange, Queue

from orchestration.engine.celeryconfig import client_app
from orchestration.fleet.embedded import RedisServer

from .conftest import Cluster

AOF = ("--appendfsync", "always")


@pytest.fixture(scope="module")
def faulty(tmp_path_factory):
    server = RedisServer(appendonly=True, extra=AOF).start()
    cluster = Cluster(server, tmp_path_factory.mktemp("faults"))
    worker = cluster.start_worker(concurrency=2, hostname="redis-faults")
    cluster.pid = worker.proc.pid
    try:
        yield cluster
    finally:
        cluster.stop()
        server.stop()


def chain(name: str, length: int, seconds: float) -> dict:
    stages = [{"id": "s0", "uses": "sleep", "params": {"seconds": seconds}}]
    stages += [
        {"id": f"s{i}", "uses": "sleep", "params": {"seconds": seconds}, "needs": [f"s{i - 1}"]}
        for i in range(1, length)
    ]
    return {"name": name, "stages": stages}


def submit(cluster: Cluster, data: dict):
    from orchestration.language.validation import validate_data

    return cluster.client.submit(validate_data(data))


def assert_same_worker(cluster: Cluster) -> None:
    worker = cluster.workers[0]
    assert worker.proc.poll() is None, f"the worker exited with {worker.proc.returncode}"
    assert worker.proc.pid == cluster.pid
    log = Path(worker.log_path).read_text(errors="replace")
    assert "Unrecoverable error" not in log
    assert "Worker exited prematurely" not in log  # no pool child died under us


def kill_and_restart(server: RedisServer, down_s: float) -> None:
    assert server.proc is not None
    server.proc.kill()  # SIGKILL: no shutdown, the AOF is what survives
    server.proc.wait()
    time.sleep(down_s)
    server.start()


def test_six_kill_9_restarts_during_a_run(faulty):
    handle = submit(faulty, chain("restarts", 24, 1.0))
    other = submit(faulty, chain("restarts-b", 12, 2.0))
    time.sleep(2)
    for down_s in (2.0, 2.0, 6.0, 1.0, 3.0, 2.0):
        kill_and_restart(faulty.server, down_s)
        time.sleep(2.0)  # some stages commit between the kills
    for h in (handle, other):
        result = h.wait(timeout=120)
        assert result.status == "succeeded", result.stage_results
    assert_same_worker(faulty)
    # the worker reconnected and serves new runs
    assert faulty.run(chain("after-restarts", 2, 0.1), timeout=60).status == "succeeded"


def test_a_5_second_read_only_episode(faulty):
    handle = submit(faulty, chain("readonly", 10, 1.0))
    time.sleep(2)
    admin = redis.Redis.from_url(faulty.server.url, decode_responses=True)
    admin.execute_command("REPLICAOF", "127.0.0.1", "1")  # read-only, as a demoted primary is
    try:
        with pytest.raises(redis.exceptions.ReadOnlyError):
            admin.set("probe", "1")
        time.sleep(5)
    finally:
        admin.execute_command("REPLICAOF", "NO", "ONE")
    result = handle.wait(timeout=120)
    assert result.status == "succeeded", result.stage_results
    assert_same_worker(faulty)
    log = Path(faulty.workers[0].log_path).read_text(errors="replace")
    assert "UNBLOCKED" in log or "READONLY" in log or "read only" in log  # it did see the episode


# -- malformed messages ----------------------------------------------------------------------------

GOOD_HEADERS = {"lang": "py", "task": "stage.noop", "id": "forged", "retries": 0, "timelimit": [None, None]}


def shapes() -> list[tuple[str, object, dict, str | None]]:
    """(what, body, headers, content type): 20 messages a worker must drop and survive."""
    stage = "stage.noop"
    return [
        ("body is an object", {"not": "a list"}, {}, None),
        ("body is a short list", [1, 2], {}, None),
        ("body is empty", [], {}, None),
        ("body is a string", "hello", {}, None),
        ("no stage arguments", [[], {}, {}], {}, None),
        ("attempt is a string", [["r1", "s1", "x"], {}, {}], {}, None),
        ("count too big", [["r1", "s1", 1, 0, 10**6], {}, {}], {}, None),
        ("keyword arguments", [["r1", "s1"], {"extra": 1}, {}], {}, None),
        ("args is an object", [{"a": 1}, {}, {}], {}, None),
        ("kwargs is a list", [["r1", "s1"], [], {}], {}, None),
        ("embed is a list", [["r1", "s1"], {}, []], {}, None),
        ("callbacks is a string", [["r1", "s1"], {}, {"callbacks": "x"}], {}, None),
        ("no task id", [["r1", "s1"], {}, {}], {"id": None}, None),
        ("task name is a list", [["r1", "s1"], {}, {}], {"task": [stage]}, None),
        ("task name is a number", [["r1", "s1"], {}, {}], {"task": 5}, None),
        ("eta is not a time", [["r1", "s1"], {}, {}], {"eta": "tomorrow-ish"}, None),
        ("timelimit is a string", [["r1", "s1"], {}, {}], {"timelimit": "x"}, None),
        ("retries is a string", [["r1", "s1"], {}, {}], {"retries": "many"}, None),
        ("unknown task name", [[], {}, {}], {"task": "no.such.task"}, None),
        ("body is not JSON", b"{not json", {}, "application/json"),
        ("body is a pickle", b"\x80\x04K\x01.", {}, "application/x-python-serialize"),
    ]


def test_malformed_messages_are_dropped_and_the_worker_stays(faulty):
    handle = submit(faulty, chain("beside-malformed", 6, 0.5))
    app = client_app(faulty.settings)
    queue = Queue("cpu", Exchange("cpu", type="direct"), routing_key="cpu")
    cases = shapes()
    with app.connection_for_write() as conn:
        producer = conn.Producer()
        for n, (_, body, headers, content_type) in enumerate(cases):
            merged = {**GOOD_HEADERS, "id": f"forged-{n}", **headers}
            if isinstance(body, bytes):
                producer.publish(
                    body,
                    exchange=queue.exchange,
                    routing_key="cpu",
                    headers=merged,
                    content_type=content_type,
                    content_encoding="binary",
                    declare=[queue],
                )
            else:
                producer.publish(
                    json.dumps(body),
                    exchange=queue.exchange,
                    routing_key="cpu",
                    headers=merged,
                    content_type="application/json",
                    content_encoding="utf-8",
                    declare=[queue],
                )
    result = handle.wait(timeout=60)
    assert result.status == "succeeded", result.stage_results
    # the queue is empty: every forged message was taken and dropped, none restored
    assert faulty.redis.llen("cpu") == 0
    log = Path(faulty.workers[0].log_path).read_text(errors="replace")
    dropped = log.count("dropped malformed message")
    # every shape but the unknown task name (Celery's own unknown-task path rejects that one)
    assert dropped >= len(cases) - 1, log[-4000:]
    assert "its body is {'not': 'a list'}, not [args, kwargs, embed]" in log
    assert_same_worker(faulty)
    assert faulty.run(chain("after-malformed", 2, 0.1), timeout=60).status == "succeeded"


def test_a_database_the_server_lacks_is_exit_2_saying_so(faulty):
    url = faulty.server.url.rsplit("/", 1)[0] + "/99"  # redis-server has 16 databases by default
    env = {**os.environ, "CHORDFLOW_REDIS_URL": url}
    done = subprocess.run(
        [sys.executable, "-m", "orchestration", "runs"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2, done.stderr
    assert "the database 99 does not exist on this Redis" in done.stderr


def test_closing_a_channel_after_its_connection_detached_is_a_connection_fault(faulty):
    """kombu's own crash (issue 19, point 1): Celery closes the broken connection, then the channel
    restores its unacknowledged messages through a pool rebuilt from the detached transport,
    `AttributeError: 'NoneType' object has no attribute 'hostname'`, an "Unrecoverable error".
    With our transport it is a connection fault, and the message goes back to its queue as soon
    as a new channel consumes."""
    from kombu import Connection

    from orchestration.engine import broker

    url = faulty.server.url.replace("redis://", f"{broker.TRANSPORT}://", 1)
    queue = Queue("fault-probe", Exchange("fault-probe", type="direct"), routing_key="fault-probe")
    with Connection(url) as conn:
        conn.Producer().publish({"n": 1}, exchange=queue.exchange, routing_key="fault-probe", declare=[queue])
        channel = conn.channel()
        message = channel.basic_get("fault-probe", no_ack=False)
        assert message is not None and faulty.redis.hlen("unacked") == 1
        channel.connection.client = None  # what kombu's Connection._close leaves behind
        with pytest.raises(broker.StateChanged):
            channel.close()
    with Connection(url) as conn:
        consumer = conn.Consumer([queue], callbacks=[], accept=["json"])
        consumer.consume()  # the next channel puts the message back first
        assert faulty.redis.llen("fault-probe") == 1 and faulty.redis.hlen("unacked") == 0
        consumer.cancel()
