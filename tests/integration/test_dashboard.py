"""The dashboard serves runs as JSON and draws a run's DAG, coloured by stage state, in a real browser."""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import urllib.error
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import pytest

from orchestration.cli.dashboard import serve

from .conftest import ARTIFACTS, pipeline

CHROMIUM = "/usr/bin/chromium"
HOSTILE = "<b>bold</b> & <script>alert(1)</script>"
EXPECTED = {
    "extract": "succeeded",
    "ok": "succeeded",
    "broken": "failed",
    "after_broken": "succeeded",
    "skipped": "skipped",
    "each": "succeeded",
    "report": "succeeded",
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
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--no-proxy-server",
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
