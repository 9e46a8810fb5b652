"""Stale pipelines and stale assets: `chordflow health` reports them, and the `pipeline_stale` and
`run_failed` events reach the webhooks, so an alert can be sent. Real Redis, a real worker (whose
hook sender looks for stale pipelines), a real HTTP receiver."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest

from orchestration.engine.triggers import STALE_CHECK_S
from orchestration.language.validation import load_pipeline

from .conftest import wait_until
from .pipelines_support import FAILING, chordflow, plain_worker, write


class Receiver(BaseHTTPRequestHandler):
    got: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        Receiver.got.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def receiver():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/alerts"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def fleet(bare_cluster):
    plain_worker(bare_cluster, "health", env={"CHORDFLOW_WEBHOOK_TOTAL_S": "5"})
    return bare_cluster


def received(kind: str, pipeline: str) -> list[dict[str, Any]]:
    return [e for e in Receiver.got if e.get("kind") == kind and e.get("pipeline") == pipeline]


def test_health_reports_stale_pipelines_and_assets_and_webhooks_hear_of_it(fleet, receiver, tmp_path):
    hook = {"url": receiver, "events": ["pipeline_stale", "run_failed"], "timeout": "2s"}
    stale = write(tmp_path, "stale-p", max_age="2s", provides=["stale_asset"], webhooks=[hook])
    failing = write(tmp_path, "fail-p", FAILING, webhooks=[hook])
    assert chordflow(fleet, "pipelines", "add", stale).returncode == 0

    # A run that fails: its run_failed event reaches the webhook
    assert not fleet.client.submit(load_pipeline(failing)).wait(timeout=120).success
    wait_until(lambda: received("run_complete", "fail-p"), 60)
    assert received("run_complete", "fail-p")[0]["status"] == "failed"

    # Fresh right after a success
    assert fleet.client.submit(load_pipeline(stale)).wait(timeout=120).success
    report = json.loads(chordflow(fleet, "health", "--json").stdout)
    assert not any("stale-p" in p or "stale_asset" in p for p in report["problems"]), report["problems"]

    # Two seconds later, stale: health says so, for the pipeline and for the asset it provides
    time.sleep(3)
    checked = chordflow(fleet, "health", "--json")
    report = json.loads(checked.stdout)
    assert checked.returncode == 1
    assert any(p.startswith("pipeline 'stale-p' is stale") for p in report["problems"]), report["problems"]
    assert any(
        p.startswith("asset 'stale_asset' is stale: it was last provided by stale-p")
        for p in report["problems"]
    )
    assert [a["stale"] for a in report["assets"] if a["asset"] == "stale_asset"] == [True]

    # ... and the hook sender sends pipeline_stale to the pipeline's webhooks, once
    wait_until(lambda: received("pipeline_stale", "stale-p"), 3 * STALE_CHECK_S + 10, interval=0.5)
    alert = received("pipeline_stale", "stale-p")[0]
    assert alert["max_age_s"] == 2.0 and alert["age_s"] > 2 and "is stale" in alert["message"]
    time.sleep(STALE_CHECK_S + 2)  # another look finds it still stale: no second alert
    assert len(received("pipeline_stale", "stale-p")) == 1
