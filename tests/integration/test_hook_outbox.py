"""Hooks and webhooks are delivered off the stage's path, from the hooks outbox, at least once.

Each test starts its own worker and stops it at the end: the workers of this module share
the outbox's consumer group, and a sender stuck on a dead endpoint must not hold up the
events of the next test.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

from orchestration.language.validation import validate_data

from .conftest import ARTIFACTS, pipeline, wait_until

# Short delivery caps so a sender that gives up on a dead endpoint is free again soon.
QUICK = {"CHORDFLOW_WEBHOOK_TOTAL_S": "1", "CHORDFLOW_HOOK_TIMEOUT_S": "1"}


def _events(cluster, run_id: str) -> list[dict]:
    return [json.loads(e) for e in cluster.redis.lrange(f"test:hooks:{run_id}", 0, -1)]


def _worker_log(name: str) -> str:
    return "".join(p.read_text(errors="replace") for p in ARTIFACTS.glob(f"worker-*-{name}.log"))


class _BlackHole:
    """A TCP endpoint on 127.0.0.1 that accepts connections and never answers."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.accepted: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/never"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)  # held open, never read, never answered

    def close(self) -> None:
        self.sock.close()
        for conn in self.accepted:
            conn.close()


def _refused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_webhook_that_never_answers_does_not_hold_the_stage(bare_cluster):
    cluster = bare_cluster
    worker = cluster.start_worker(hostname="outbox-blackhole", concurrency=1, env=QUICK)
    hole = _BlackHole()
    try:
        started = time.monotonic()
        result = cluster.run(
            pipeline(
                "never-answered",
                {"id": "body", "uses": "test.record"},
                webhooks=[
                    {"url": hole.url, "events": ["*"], "timeout": "5s"},
                    # refused at once; its failure is logged without its credentials
                    {"url": f"http://hook:s3cret@127.0.0.1:{_refused_port()}/gone", "events": ["*"]},
                ],
            ),
            timeout=60,
        )
        wall = time.monotonic() - started
        body = result.stage_results["body"]
        assert result.status == "succeeded", result.stage_results
        assert cluster.count(result.run_id, "body") == 1
        assert body["attempts"] == 1 and body["error"] is None  # no PoisonMessage, no retry
        # The endpoint's 5 s timeout was never waited for on the stage's path (the lease is 15 s).
        assert result.duration < 4.5 and wall < 10, (result.duration, wall)
        wait_until(lambda: hole.accepted, timeout=15)  # the webhook was tried, off the path

        # The sender gives up after its total cap and says so, without the URL's credentials.
        def gave_up() -> bool:
            log = _worker_log("outbox-blackhole")
            return (
                f"webhook {hole.url} for stage_start of run {result.run_id} failed after retries" in log
                and "webhook http://***@127.0.0.1" in log
            )

        wait_until(gave_up, timeout=30, interval=0.2)
        assert "s3cret" not in _worker_log("outbox-blackhole")
    finally:
        worker.stop()
        hole.close()


def test_a_python_hook_that_runs_past_the_lease_does_not_hold_the_stage(bare_cluster):
    cluster = bare_cluster
    worker = cluster.start_worker(
        hostname="outbox-slowhook",
        concurrency=1,
        env={**QUICK, "CHORDFLOW_LEASE_S": "3", "CHORDFLOW_HEARTBEAT_S": "0.5", "TEST_SLOW_HOOK_S": "8"},
    )
    try:
        result = cluster.run(
            pipeline(
                "slow-hook",
                {"id": "slowhook", "uses": "test.record"},
                {"id": "after", "uses": "test.record", "needs": ["slowhook"]},
            ),
            timeout=60,
        )
        assert result.status == "succeeded", result.stage_results
        assert cluster.count(result.run_id, "slowhook") == 1
        assert cluster.count(result.run_id, "after") == 1
        assert result.stage_results["slowhook"]["attempts"] == 1
        assert result.duration < 3, result.duration  # shorter than the lease, and than the 8 s hook
        wait_until(lambda: cluster.redis.get(f"test:slowhook:{result.run_id}") == "1", timeout=15)
        # The sender stopped waiting for it after CHORDFLOW_HOOK_TIMEOUT_S and named it.
        wait_until(
            lambda: (
                "slow_start_hook" in _worker_log("outbox-slowhook")
                and "still running after" in _worker_log("outbox-slowhook")
            ),
            timeout=15,
            interval=0.2,
        )
        # ... and went on with the next events: the run's end reached the hooks.
        wait_until(
            lambda: any(e["kind"] == "run_complete" for e in _events(cluster, result.run_id)), timeout=15
        )
        assert cluster.redis.get(f"test:slowhook:{result.run_id}") == "1"
    finally:
        worker.stop()


def test_cancel_pause_and_resume_reach_the_workers_python_hooks(bare_cluster):
    cluster = bare_cluster
    worker = cluster.start_worker(hostname="outbox-control", concurrency=2, env=QUICK)
    try:
        # cancel while a stage sleeps: the worker's on_run_complete hook sees 'cancelled'
        handle = cluster.client.submit(
            validate_data(
                pipeline(
                    "cancelled-hooks",
                    {"id": "sleepy", "uses": "test.slow_counted", "params": {"seconds": 60}},
                )
            )
        )
        run_id = handle.run_id
        wait_until(lambda: cluster.count(run_id, "sleepy") == 1, timeout=30)
        assert cluster.client.cancel(run_id) == "cancelled"
        wait_until(lambda: any(e["kind"] == "run_complete" for e in _events(cluster, run_id)), timeout=20)
        assert [
            (e["kind"], e["status"]) for e in _events(cluster, run_id) if e["kind"] == "run_complete"
        ] == [("run_complete", "cancelled")]
        assert cluster.client.status(run_id)["status"] == "cancelled"

        # pause and resume: run_paused then run_resumed, then the run ends and says so once
        handle = cluster.client.submit(
            validate_data(
                pipeline(
                    "paused-hooks",
                    {"id": "first", "uses": "test.slow_counted", "params": {"seconds": 1.5}},
                    {"id": "second", "uses": "test.record", "needs": ["first"]},
                )
            )
        )
        run_id = handle.run_id
        wait_until(lambda: cluster.count(run_id, "first") == 1, timeout=30)
        assert cluster.client.pause(run_id) == "paused"
        time.sleep(2.5)  # 'first' commits while the run is paused; 'second' waits for the resume
        assert cluster.count(run_id, "second") == 0
        assert cluster.client.resume(run_id) == "resumed"
        result = handle.wait(timeout=60)
        assert result.status == "succeeded"
        assert cluster.count(run_id, "first") == 1 and cluster.count(run_id, "second") == 1

        def run_level() -> list[tuple[str, str]]:
            return [
                (e["kind"], e["status"])
                for e in _events(cluster, run_id)
                if e["kind"] in ("run_paused", "run_resumed", "run_complete")
            ]

        wait_until(lambda: len(run_level()) >= 3, timeout=20)
        time.sleep(0.5)  # nothing more comes
        assert run_level() == [
            ("run_paused", "paused"),
            ("run_resumed", "running"),
            ("run_complete", "succeeded"),
        ]
    finally:
        worker.stop()


class _Receiver(BaseHTTPRequestHandler):
    received: ClassVar[list[dict]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Receiver.received.append({**json.loads(body), "authorization": self.headers.get("Authorization")})
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def test_a_webhook_gets_every_event_of_a_run_once(bare_cluster):
    cluster = bare_cluster
    worker = cluster.start_worker(hostname="outbox-receiver", concurrency=2, env=QUICK)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://hook:s3cret@127.0.0.1:{server.server_address[1]}/hook"
        result = cluster.run(
            pipeline(
                "every-event",
                {"id": "a", "uses": "test.record"},
                {"id": "b", "uses": "test.record", "needs": ["a"]},
                webhooks=[{"url": url, "events": ["*"], "timeout": "2s"}],
            ),
            timeout=60,
        )
        assert result.status == "succeeded"

        def mine() -> list[dict]:
            return [e for e in _Receiver.received if e.get("run_id") == result.run_id]

        wait_until(lambda: any(e["kind"] == "run_complete" for e in mine()), timeout=20)
        time.sleep(1.0)  # a duplicate would come now
        # One worker, one sender: each event once, in the order the run committed them.
        assert [(e["kind"], e.get("stage_id")) for e in mine()] == [
            ("run_start", None),
            ("stage_start", "a"),
            ("stage_complete", "a"),
            ("stage_start", "b"),
            ("stage_complete", "b"),
            ("run_complete", None),
        ]
        assert mine()[-1]["status"] == "succeeded"
        assert all(e["pipeline"] == "every-event" for e in mine())
        assert {e["authorization"] for e in mine()} == {"Basic aG9vazpzM2NyZXQ="}  # hook:s3cret
        # delivered and acknowledged: nothing left in the outbox for this run
        left = [json.loads(f["e"]) for _, f in cluster.redis.xrange("chordflow:hooks")]
        assert not [e for e in left if e.get("run_id") == result.run_id]
    finally:
        server.shutdown()
        worker.stop()


class _StallFirst(BaseHTTPRequestHandler):
    """Records every POST; holds the answer to the first one until `release` is set."""

    received: ClassVar[list[dict]] = []
    release: ClassVar[threading.Event] = threading.Event()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _StallFirst.received.append(json.loads(body))
        if len(_StallFirst.received) == 1:
            _StallFirst.release.wait(60)
        try:
            self.send_response(204)
            self.end_headers()
        except OSError:
            pass  # the sender that asked is gone

    def log_message(self, *args) -> None:
        pass


def test_an_event_whose_sender_died_mid_delivery_is_delivered_by_another_worker(bare_cluster):
    cluster = bare_cluster
    server = ThreadingHTTPServer(("127.0.0.1", 0), _StallFirst)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    first = cluster.start_worker(hostname="outbox-dies", concurrency=1, env=QUICK)
    second = None
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/hook"
        result = cluster.run(
            pipeline(
                "sender-dies",
                {"id": "a", "uses": "test.record"},
                webhooks=[{"url": url, "events": ["*"], "timeout": "30s"}],
            ),
            timeout=60,
        )
        assert result.status == "succeeded"
        wait_until(lambda: _StallFirst.received, timeout=20)  # the first POST hangs...
        first.kill()  # ... and its worker dies before the answer
        _StallFirst.release.set()
        assert [e["kind"] for e in _StallFirst.received] == ["run_start"]

        second = cluster.start_worker(
            hostname="outbox-survivor", concurrency=1, env={**QUICK, "CHORDFLOW_HOOK_CLAIM_IDLE_S": "2"}
        )

        def kinds() -> list[str]:
            return sorted(e["kind"] for e in _StallFirst.received if e.get("run_id") == result.run_id)

        wait_until(lambda: len(kinds()) >= 5, timeout=45, interval=0.2)
        time.sleep(1.0)  # a further duplicate would come now
        # at least once: the event in flight when its sender died came again, the others once
        assert kinds() == ["run_complete", "run_start", "run_start", "stage_complete", "stage_start"]
        assert cluster.count(result.run_id, "a") == 1
    finally:
        _StallFirst.release.set()
        server.shutdown()
        first.stop()
        if second is not None:
            second.stop()
