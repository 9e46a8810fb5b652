"""Caching by type, version, params and inputs; hooks and webhooks once per event."""

from __future__ import annotations

import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

from orchestration.language.validation import validate_data

from .conftest import ARTIFACTS, pipeline, wait_until


def _cached(value: int) -> dict:
    return pipeline(
        "cached",
        {"id": "src", "uses": "noop", "params": {"output": [1, 2]}},
        {
            "id": "calc",
            "uses": "test.versioned",
            "needs": ["src"],
            "params": {"value": value},
            "cache": {"ttl": "1d"},
        },
    )


def test_cache_hits_and_misses(bare_cluster):
    cluster = bare_cluster
    worker = cluster.start_worker(hostname="v1", env={"TEST_TYPE_VERSION": "1"})
    first = cluster.run(_cached(1))
    second = cluster.run(_cached(1))
    changed_param = cluster.run(_cached(2))
    no_cache = cluster.client.submit(validate_data(_cached(1)), no_cache=True).wait(timeout=30)
    assert [cluster.count(r.run_id, "calc") for r in (first, second, changed_param, no_cache)] == [1, 0, 1, 1]
    assert second.outputs["calc"] == first.outputs["calc"] == {"value": 1, "version": "1"}
    assert cluster.redis.hget(f"chordflow:run:{second.run_id}:stage:calc", "cache") == "hit"

    worker.stop()
    cluster.redis.delete("chordflow:workers")
    cluster.start_worker(hostname="v2", env={"TEST_TYPE_VERSION": "2"})
    new_version = cluster.run(_cached(1))
    assert cluster.count(new_version.run_id, "calc") == 1
    assert new_version.outputs["calc"] == {"value": 1, "version": "2"}


def _events(cluster, run_id: str) -> list[dict]:
    return [json.loads(e) for e in cluster.redis.lrange(f"test:hooks:{run_id}", 0, -1)]


class _Receiver(BaseHTTPRequestHandler):
    received: ClassVar[list[dict]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Receiver.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def test_hooks_fire_once_per_event_and_webhooks_get_the_failure(bare_cluster):
    cluster = bare_cluster
    cluster.start_worker(hostname="hooks-a", concurrency=2)
    cluster.start_worker(hostname="hooks-b", concurrency=2)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/hook"
        result = cluster.run(
            pipeline(
                "hooked",
                {"id": "ok", "uses": "noop"},
                {
                    "id": "flaky",
                    "uses": "fail",
                    "params": {"times": 1},
                    "retry": {"max_attempts": 2, "backoff": "fixed", "delay": 0.1},
                },
                {"id": "broken", "uses": "fail", "params": {"times": -1}, "needs": ["ok", "flaky"]},
                webhooks=[{"url": url, "events": ["run_failed"], "timeout": "2s"}],
            )
        )
        wait_until(lambda: _Receiver.received, timeout=10)  # delivered soon after the run ended
        # hooks run from the outbox, after the commits: wait for all 9 events, then for a stray 10th
        wait_until(lambda: len(_events(cluster, result.run_id)) >= 9, timeout=10)
        time.sleep(1.0)
    finally:
        server.shutdown()
    assert result.status == "failed"
    events = _events(cluster, result.run_id)
    by_stage = {}
    for e in events:
        by_stage.setdefault(e["stage_id"], []).append((e["kind"], e["attempt"], e.get("will_retry")))
    # Each event once. Two workers' senders share the events, so the order the hooks saw them
    # in is only guaranteed per sender: compare sorted by attempt, then start before end.
    order = {"stage_start": 0, "stage_error": 1, "stage_complete": 1}

    def chronological(seen: list[tuple]) -> list[tuple]:
        return sorted(seen, key=lambda e: (e[1], order[e[0]]))

    assert chronological(by_stage["ok"]) == [("stage_start", 1, None), ("stage_complete", 1, None)]
    assert chronological(by_stage["flaky"]) == [
        ("stage_start", 1, None),
        ("stage_error", 1, True),
        ("stage_start", 2, None),
        ("stage_complete", 2, None),
    ]
    assert chronological(by_stage["broken"]) == [("stage_start", 1, None), ("stage_error", 1, False)]
    assert [e for e in events if e["kind"] == "run_complete"] == [
        {
            "kind": "run_complete",
            "stage_id": None,
            "attempt": None,
            "will_retry": None,
            "status": "failed",
            "state": None,
        }
    ]
    assert len(events) == 9
    assert [(e["kind"], e["run_id"], e["status"]) for e in _Receiver.received] == [
        ("run_complete", result.run_id, "failed")
    ]
    # the hook that raises on every stage_complete was logged and ignored
    # (by the sender of whichever worker of this module delivered it)
    logs = "".join(p.read_text() for p in ARTIFACTS.glob(f"worker-{os.getpid()}-*.log"))
    assert "this hook is broken on purpose" in logs
