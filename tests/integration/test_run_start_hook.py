"""A `run_start` event: a webhook that asks for it gets it once per run, when the run is created
(issue 21: users of Airflow and Prefect have on-start callbacks). Real redis-server and workers."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

from .conftest import pipeline, wait_until


class _Receiver(BaseHTTPRequestHandler):
    received: ClassVar[list[dict]] = []

    def do_POST(self) -> None:
        _Receiver.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def test_a_webhook_gets_run_start_once(cluster):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/hook"
        hooks = [{"url": url, "events": ["run_start", "run_complete"], "timeout": "2s"}]
        result = cluster.run(
            pipeline("started", {"id": "a", "uses": "noop"}, {"id": "b", "uses": "noop"}, webhooks=hooks)
        )
        wait_until(lambda: len(_Receiver.received) >= 2, timeout=15)
    finally:
        server.shutdown()
    kinds = [(e["kind"], e["run_id"]) for e in _Receiver.received]
    assert kinds.count(("run_start", result.run_id)) == 1
    start = next(e for e in _Receiver.received if e["kind"] == "run_start")
    assert start["pipeline"] == "started" and start["stages"] == 2 and start["status"] == "running"
