"""The dashboard serves runs as JSON and draws a run's DAG, coloured by stage state, in a real browser."""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import sys
import urllib.error
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import pytest

from orchestration.cli.dashboard import serve
from orchestration.language.validation import validate_data
from orchestration.states import RUN_FINAL, RunStatus, State

from .cdp import CHROMIUM, HEADLESS, Browser
from .conftest import ARTIFACTS, pipeline, wait_until

HOSTILE = "<b>bold</b> & <script>alert(1)</script>"
EXPECTED = {
    "extract": State.SUCCEEDED,
    "ok": State.SUCCEEDED,
    "broken": State.FAILED,
    "after_broken": State.SUCCEEDED,
    "skipped": State.SKIPPED,
    "each": State.SUCCEEDED,
    "report": State.SUCCEEDED,
}
# urllib would send even 127.0.0.1 through an http_proxy from the environment
http = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.fixture(scope="module")
def dashboard(cluster):
    """Given a finished run with a success, a non-critical failure, a skip and a fan-out,
    and the dashboard serving that Redis on a free port."""
    result = cluster.run(
        pipeline(
            "dashboard-demo",
            {"id": "extract", "uses": "noop", "params": {"output": [1, 2, 3]}},
            {"id": "ok", "uses": "noop", "needs": ["extract"], "params": {"output": "fine"}},
            {
                "id": "broken",
                "uses": "fail",
                "needs": ["extract"],
                "critical": False,
                "params": {"times": -1, "message": HOSTILE},
            },
            {"id": "after_broken", "uses": "noop", "needs": ["broken"], "critical": False},
            {"id": "skipped", "uses": "noop", "needs": ["extract"], "when": "false"},
            {"id": "each", "uses": "noop", "needs": ["extract"], "for_each": "extract"},
            {
                "id": "report",
                "uses": "noop",
                "needs": ["ok", "each", "skipped"],
                "params": {"output": "done"},
            },
        )
    )
    server = serve(cluster.settings, port=0)
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", result
    finally:
        server.shutdown()
        server.server_close()


def get(url: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with http.open(url, timeout=10) as res:
            return res.status, dict(res.headers), res.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_runs_endpoint_lists_the_newest_run_first(dashboard):
    base, result = dashboard
    code, headers, body = get(f"{base}/api/runs?limit=5")
    assert code == 200 and headers["Content-Type"].startswith("application/json")
    runs = json.loads(body)["runs"]
    assert runs[0]["run_id"] == result.run_id
    assert runs[0]["pipeline"] == "dashboard-demo"
    assert runs[0]["status"] == result.status
    assert runs[0]["created_at"] <= runs[0]["finished_at"]
    assert [r["created_at"] for r in runs] == sorted((r["created_at"] for r in runs), reverse=True)

    code, _, body = get(f"{base}/api/runs?pipeline=dashboard-demo")
    assert {r["pipeline"] for r in json.loads(body)["runs"]} == {"dashboard-demo"}
    assert json.loads(get(f"{base}/api/runs?pipeline=no-such-pipeline")[2])["runs"] == []
    assert get(f"{base}/api/runs?limit=0")[0] == 400


def test_run_endpoint_has_stages_edges_and_levels(dashboard):
    base, result = dashboard
    code, _, body = get(f"{base}/api/runs/{result.run_id}")
    assert code == 200
    run = json.loads(body)
    assert run["run_id"] == result.run_id and run["status"] == result.status
    assert {sid: s["state"] for sid, s in run["stages"].items()} == EXPECTED
    broken = run["stages"]["broken"]
    assert broken["attempts"] == 1 and broken["host"] == "w0"
    assert HOSTILE in broken["error"]["message"]
    assert run["stages"]["each"]["items_total"] == 3 and run["stages"]["each"]["items_done"] == 3
    assert run["stages"]["ok"]["started_at"] <= run["stages"]["ok"]["finished_at"]
    assert run["levels"] == {
        "extract": 0,
        "ok": 1,
        "broken": 1,
        "skipped": 1,
        "each": 1,
        "after_broken": 2,
        "report": 2,
    }
    edges = {(e["from"], e["to"]) for e in run["edges"]}
    assert edges == {
        ("extract", "ok"),
        ("extract", "broken"),
        ("extract", "skipped"),
        ("extract", "each"),
        ("broken", "after_broken"),
        ("ok", "report"),
        ("each", "report"),
        ("skipped", "report"),
    }
    assert next(n["id"] for n in run["nodes"]) == "extract"
    assert next(n for n in run["nodes"] if n["id"] == "each")["fans_out"] is True


def test_page_and_unknown_paths(dashboard):
    base, _ = dashboard
    code, headers, body = get(f"{base}/")
    assert code == 200 and headers["Content-Type"].startswith("text/html")
    assert set(re.findall(rb"https?://[^\"'`\s]+", body)) == {b"http://www.w3.org/2000/svg"}  # no CDN
    assert "script-src 'sha256-" in headers["Content-Security-Policy"]
    assert get(f"{base}/api/runs/r-no-such-run")[0] == 404
    assert get(f"{base}/nothing-here")[0] == 404


class StageElements(HTMLParser):
    """(tag, data-stage, data-state) of every element that carries a stage id."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if a.get("data-stage"):
            self.found.append((tag, a["data-stage"] or "", a.get("data-state")))


def chromium(tmp_path: Path, url: str, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile-{len(list(tmp_path.iterdir()))}"
    return subprocess.run(
        [
            CHROMIUM,
            *HEADLESS,
            f"--user-data-dir={profile}",
            "--window-size=1400,900",
            "--virtual-time-budget=5000",
            *args,
            url,
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_browser_draws_the_dag_coloured_by_state(dashboard, tmp_path):
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.skip("chromium is not installed (apt-get install chromium)")
    base, result = dashboard
    url = f"{base}/#run={result.run_id}"

    # When the page is rendered in headless Chromium
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "dashboard-run.png"
    shot.unlink(missing_ok=True)
    done = chromium(tmp_path, url, f"--screenshot={shot}")
    assert done.returncode == 0, done.stderr[-2000:]
    dom = chromium(tmp_path, url, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]

    # Then every stage is a node and a table row carrying its state
    parser = StageElements()
    parser.feed(dom.stdout)
    nodes = {sid: state for tag, sid, state in parser.found if tag == "g"}
    rows = {sid: state for tag, sid, state in parser.found if tag == "tr"}
    assert nodes == EXPECTED
    assert rows == EXPECTED
    assert len(re.findall(r"<path [^>]*data-from=", dom.stdout)) == 8
    assert 'data-run="' + result.run_id + '"' in dom.stdout
    assert "dashboard-demo" in dom.stdout
    # and user data is shown as text, never as markup
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; &lt;script&gt;alert(1)&lt;/script&gt;" in dom.stdout
    assert "<b>bold</b>" not in dom.stdout and "<script>alert(1)" not in dom.stdout

    # and the screenshot is a real 1400x900 picture
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", data[16:24]) == (1400, 900)
    assert len(data) > 20_000


# -- actions, live logs, items and the timeline ------------------------------------------------------

TOKEN = "let-me-act-7f3a"


def post(url: str, headers: dict[str, str] | None = None, body: bytes = b"{}") -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, method="POST", headers=headers or {})
    try:
        with http.open(request, timeout=10) as res:
            return res.status, json.loads(res.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def test_a_dashboard_without_a_token_is_read_only(dashboard):
    base, result = dashboard
    session = json.loads(get(f"{base}/api/session")[2])
    assert session["actions"] is False
    code, body = post(
        f"{base}/api/runs/{result.run_id}/retry",
        {
            "Content-Type": "application/json",
            "X-CSRF-Token": session["csrf"],
            "X-Chordflow-Token": "anything",
        },
    )
    assert code == 403 and "read-only" in body["error"]


@pytest.fixture
def running_run(cluster):
    """A run whose fan-out is done and whose `long` stage prints three lines, then sleeps."""
    spec = validate_data(
        pipeline(
            "dashboard-live",
            {"id": "list", "uses": "noop", "params": {"output": ["a", "b", "c"]}},
            {"id": "each", "uses": "noop", "needs": ["list"], "for_each": "list"},
            {
                "id": "long",
                "needs": ["each"],
                "run": [
                    sys.executable,
                    "-c",
                    "import time\nfor i in range(3): print('tick', i, flush=True)\ntime.sleep(120)",
                ],
            },
        )
    )
    handle = cluster.client.submit(spec)
    yield handle.run_id
    if cluster.client.store.runs.run_status(handle.run_id) not in RUN_FINAL:
        cluster.client.cancel(handle.run_id)


@pytest.fixture
def acting(cluster):
    server = serve(cluster.settings, port=0, token=TOKEN)
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_an_action_needs_the_token_the_csrf_token_json_and_this_origin(cluster, acting, running_run):
    session = json.loads(get(f"{acting}/api/session")[2])
    assert session["actions"] is True
    good = {"Content-Type": "application/json", "X-CSRF-Token": session["csrf"], "X-Chordflow-Token": TOKEN}
    url = f"{acting}/api/runs/{running_run}/pause"
    for refused in (
        {**good, "X-Chordflow-Token": "wrong"},
        {k: v for k, v in good.items() if k != "X-Chordflow-Token"},
        {k: v for k, v in good.items() if k != "X-CSRF-Token"},
        {**good, "Content-Type": "text/plain"},  # what a cross-site form can send
        {**good, "Origin": "http://evil.example"},
        {**good, "Sec-Fetch-Site": "cross-site"},
    ):
        code, body = post(url, refused)
        assert code == 403, (refused, body)
    assert get(url)[0] == 404  # a GET never acts
    assert cluster.client.store.runs.run_status(running_run) == RunStatus.RUNNING
    code, body = post(url, good)
    assert code == 200 and body["outcome"] == RunStatus.PAUSED
    assert cluster.client.store.runs.run_status(running_run) == RunStatus.PAUSED
    code, body = post(url, good)
    assert code == 409 and body["outcome"].startswith("not paused")
    assert post(f"{acting}/api/runs/{running_run}/resume", good)[1]["outcome"] == "resumed"


def test_browser_shows_live_logs_items_and_timeline_then_cancels_the_run_with_the_token(
    cluster, acting, running_run, tmp_path
):
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed (apt-get install chromium)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shots = {name: ARTIFACTS / f"dashboard-{name}.png" for name in ("live", "cancelled")}
    for shot in shots.values():
        shot.unlink(missing_ok=True)
    wait_until(
        lambda: cluster.client.store.runs.stage_state(running_run, "long") == State.RUNNING, timeout=60
    )

    browser = Browser(tmp_path / "profile")
    try:
        # Given the page of the running run
        browser.open(f"{acting}/#run={running_run}")
        browser.wait_for('document.querySelector(\'tr[data-stage="long"][data-state="running"]\') !== null')
        # When the running stage is picked in the graph, its live log shows what it printed
        browser.click('g.node[data-stage="long"]')
        browser.wait_for("document.getElementById('loglines').textContent.includes('tick 2')")
        assert "STDOUT" in browser.eval("document.getElementById('loglines').textContent")
        # and the timeline has the attempts of its stages and items on the worker's host
        assert browser.eval("document.querySelectorAll('#timeline g.bar').length") >= 5
        assert "w0" in browser.eval("document.getElementById('timeline').textContent")
        # and the fan-out lists its items with their state and host
        browser.click('g.node[data-stage="each"]')
        browser.wait_for("document.querySelectorAll('#items tr[data-state=\"succeeded\"]').length === 3")
        assert browser.eval("document.getElementById('items').textContent").count("w0") == 3
        browser.click('g.node[data-stage="long"]')
        browser.wait_for("document.getElementById('loglines').textContent.includes('tick 0')")
        browser.screenshot(shots["live"])

        # When the operator types the token and presses Cancel (and confirms)
        assert browser.eval("document.getElementById('act-cancel').disabled") is False
        browser.type_into("#token", TOKEN)
        browser.click("#act-cancel")

        # Then the run is cancelled, in Redis and on the page
        wait_until(
            lambda: cluster.client.store.runs.run_status(running_run) == RunStatus.CANCELLED, timeout=30
        )
        assert browser.dialogs and running_run in browser.dialogs[0]
        browser.wait_for("document.querySelector('#summary .badge[data-state=\"cancelled\"]') !== null")
        browser.wait_for("document.getElementById('actmsg').textContent.includes('cancelled')")
        assert browser.eval("document.getElementById('act-cancel').disabled") is True
        browser.screenshot(shots["cancelled"])
    finally:
        browser.close()
    # and the screenshots are real pictures of the page
    for shot in shots.values():
        data = shot.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000, shot
