"""The fleet page: runs filtered and paged, pipelines with their links and stage graphs, schedules
with their next tick, workers and health, in JSON and in a real browser; the run page fits a
6-stage graph to 1400 px and shows a Retry at once."""

from __future__ import annotations

import json
import re
import shutil
import sys
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from urllib.parse import quote

import pytest

from orchestration.cli.dashboard import serve
from orchestration.cli.dashboard_fleet import next_tick
from orchestration.fleet.registry import register
from orchestration.fleet.schedules import add_schedule, parse_cron, parse_every
from orchestration.language.validation import validate_data
from orchestration.states import RunStatus, State

from .cdp import CHROMIUM, Browser
from .conftest import ARTIFACTS, ROOT, pipeline, wait_until

TOKEN = "fleet-token-5e1d"
SHOTS = ROOT / "artifacts"  # the final screenshots, for the reader (not committed)
http = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # no http_proxy to loopback
CHAIN = ("extract", "clean", "validate", "gate", "train", "publish")


def gate_script(marker: Path) -> list[str]:
    """Fails the first time (and leaves a marker); then runs for 6 s and succeeds."""
    code = (
        "import pathlib, sys, time\n"
        f"m = pathlib.Path({str(marker)!r})\n"
        "if not m.exists():\n    m.write_text('1'); print('first attempt fails'); sys.exit(3)\n"
        "time.sleep(6); print('fixed')"
    )
    return [sys.executable, "-c", code]


def get(url: str) -> tuple[int, dict]:
    try:
        with http.open(url, timeout=20) as res:
            return res.status, json.loads(res.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


@pytest.fixture(scope="module")
def fleet(cluster, tmp_path_factory):
    """Registered pipelines linked by depends_on, triggers and requires; runs that succeeded, failed
    and were cancelled; two schedules (no beat: they never fire); and the dashboard with a token."""
    store, settings = cluster.client.store, cluster.settings
    ingest = validate_data(pipeline("ingest", {"id": "pull", "uses": "noop"}, max_age="1h", provides=["raw"]))
    features = validate_data(
        pipeline(
            "features",
            {"id": "build", "uses": "noop"},
            depends_on=["ingest"],
            requires=["raw"],
            triggers=[{"on_success_of": "ingest"}],
        )
    )
    report = validate_data(
        pipeline("report", {"id": "render", "uses": "noop"}, depends_on=["features"], max_age="10m")
    )
    marker = tmp_path_factory.mktemp("gate") / "failed-once"
    stages = [{"id": CHAIN[0], "uses": "noop"}]
    for before, sid in pairwise(CHAIN):
        stage = {"id": sid, "uses": "noop", "needs": [before]}
        if sid == "gate":
            stage = {"id": sid, "needs": [before], "run": gate_script(marker), "retry": {"max_attempts": 1}}
        stages.append(stage)
    train = validate_data(pipeline("train-six", *stages))
    for spec in (ingest, features, report, train):
        register(store, spec)
    add_schedule(settings, report, parse_cron("0 2 * * *"), "nightly-report")
    add_schedule(settings, ingest, parse_every("30s"), "ingest-often")

    runs: dict[str, list[str]] = {"ingest": [], "misc": []}
    for _ in range(2):
        runs["ingest"].append(cluster.client.submit(ingest).run_id)
        cluster.client.handle(runs["ingest"][-1]).wait(timeout=60)
    for i in range(5):
        misc = validate_data(pipeline("misc", {"id": "n", "uses": "noop", "params": {"output": i}}))
        runs["misc"].append(cluster.client.submit(misc).run_id)
    failed = cluster.client.submit(train)
    assert failed.wait(timeout=90).status == RunStatus.FAILED
    sleeper = cluster.client.submit(
        validate_data(pipeline("sleeper", {"id": "nap", "uses": "sleep", "params": {"seconds": 60}}))
    )
    wait_until(lambda: store.runs.stage_state(sleeper.run_id, "nap") == State.RUNNING, timeout=60)
    assert cluster.client.cancel(sleeper.run_id) == RunStatus.CANCELLED
    for run_id in runs["misc"]:
        cluster.client.handle(run_id).wait(timeout=60)
    runs.update(broken=[failed.run_id], stopped=[sleeper.run_id])
    server = serve(settings, port=0, token=TOKEN)
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", runs
    finally:
        server.shutdown()
        server.server_close()


# -- the JSON the page draws --------------------------------------------------------------------------


def test_runs_are_filtered_by_status_pipeline_and_time_and_paged(cluster, fleet):
    base, runs = fleet
    code, body = get(f"{base}/api/fleet/runs?status=failed")
    assert code == 200 and [r["run_id"] for r in body["runs"]] == runs["broken"]
    code, body = get(f"{base}/api/fleet/runs?status=failed,cancelled")
    assert {r["run_id"] for r in body["runs"]} == {*runs["broken"], *runs["stopped"]}
    assert {r["status"] for r in body["runs"]} == {RunStatus.FAILED, RunStatus.CANCELLED}

    code, body = get(f"{base}/api/fleet/runs?pipeline=misc&limit=2")
    pages = [body["runs"]]
    while body["next"] is not None:  # Older → until the last page
        code, body = get(f"{base}/api/fleet/runs?pipeline=misc&limit=2&offset={body['next']}")
        pages.append(body["runs"])
    assert [len(p) for p in pages] == [2, 2, 1]
    assert [r["run_id"] for page in pages for r in page] == runs["misc"][::-1]  # newest first, once each

    everything = cluster.client.store.runs.recent_runs(1000)
    submitted = cluster.redis.zscore(cluster.client.store.keys.runs(), runs["stopped"][0])
    code, body = get(f"{base}/api/fleet/runs?since={submitted!r}&limit=200")
    assert [r["run_id"] for r in body["runs"]] == everything[: len(body["runs"])]
    assert runs["stopped"][0] in {r["run_id"] for r in body["runs"]}
    assert runs["ingest"][0] not in {r["run_id"] for r in body["runs"]}
    code, body = get(f"{base}/api/fleet/runs?until={time.time() + 3600}&limit=200")
    assert body["in_range"] == len(everything)
    assert get(f"{base}/api/fleet/runs?since={time.time() + 3600}")[1]["runs"] == []

    for bad in (
        "status=done",
        "since=yesterday",
        "since=nan",
        "limit=0",
        "limit=201",
        "limit=%C2%B2",
        "offset=-1",
    ):
        code, body = get(f"{base}/api/fleet/runs?{bad}")
        assert code == 400 and body["error"], bad


def test_pipelines_show_their_links_freshness_last_runs_and_stage_graph(fleet):
    base, runs = fleet
    code, body = get(f"{base}/api/fleet/pipelines")
    assert code == 200
    rows = {p["pipeline"]: p for p in body["pipelines"]}
    assert {"ingest", "features", "report", "train-six", "misc", "sleeper"} <= set(rows)
    links = {(link["from"], link["to"], link["kind"]) for link in body["links"]}
    assert {
        ("ingest", "features", "depends_on"),
        ("ingest", "features", "triggers"),
        ("ingest", "features", "requires raw"),
        ("features", "report", "depends_on"),
    } <= links
    assert (rows["ingest"]["level"], rows["features"]["level"], rows["report"]["level"]) == (0, 1, 2)
    assert rows["ingest"]["freshness"] == "fresh" and rows["report"]["freshness"] == "stale"
    assert [r["run_id"] for r in rows["ingest"]["runs"]] == runs["ingest"][::-1]
    assert rows["misc"]["registered"] is False and rows["ingest"]["registered"] is True
    assert rows["report"]["schedule"] == "cron 0 2 * * *"

    code, graph = get(f"{base}/api/fleet/pipelines/train-six/graph")
    assert code == 200 and graph["source"] == "registered" and graph["run_id"] == runs["broken"][0]
    assert [n["id"] for n in graph["nodes"]] == list(CHAIN)
    assert {n["id"]: n["state"] for n in graph["nodes"]}["gate"] == State.FAILED
    assert len(graph["edges"]) == 5
    code, graph = get(f"{base}/api/fleet/pipelines/misc/graph")  # not registered: its newest run's
    assert code == 200 and graph["source"] == f"run {runs['misc'][-1]}"
    assert get(f"{base}/api/fleet/pipelines/{quote('no such')}/graph")[0] == 404


def test_the_next_tick_comes_from_the_cron_not_from_redbeats_due_at(fleet):
    base, _ = fleet
    code, body = get(f"{base}/api/fleet/schedules")
    assert code == 200
    rows = {s["name"]: s for s in body["schedules"]}
    now = datetime.fromtimestamp(body["now"], UTC)
    two = now.replace(hour=2, minute=0, second=0, microsecond=0)
    assert rows["nightly-report"]["next_at"] == (two if two > now else two + timedelta(days=1)).timestamp()
    assert rows["nightly-report"]["overdue"] is False
    # never fired: the first tick of an interval is one interval from now
    assert body["now"] < rows["ingest-often"]["next_at"] <= body["now"] + 30

    # what `schedule list` got wrong: beat fired 02:00 yesterday; it is 01:59:36 now
    fired = datetime(2026, 12, 3, 2, 0, 0, 300_000, tzinfo=UTC).timestamp()
    at = datetime(2026, 12, 4, 1, 59, 36, tzinfo=UTC).timestamp()
    assert next_tick(parse_cron("0 2 * * *"), fired, at) == datetime(2026, 12, 4, 2, tzinfo=UTC).timestamp()
    assert next_tick(parse_cron("*/15 * * * *"), None, at) == datetime(2026, 12, 4, 2, tzinfo=UTC).timestamp()
    assert next_tick(parse_every("30s"), at - 10, at) == at + 20


def test_workers_and_health(cluster, fleet):
    base, _ = fleet
    code, body = get(f"{base}/api/fleet/workers")
    assert code == 200
    (worker,) = body["workers"]
    assert worker["host"] == "w0/main" and set(worker["queues"]) == {"cpu", "gpu", "highmem"}
    assert worker["capacity"]["slots"] == 3 and 0 <= worker["age_s"] <= body["ttl_s"]
    assert "noop" in worker["types"]
    code, body = get(f"{base}/api/fleet/health")
    assert code == 200 and body["healthy"] is True, body["problems"]
    # report has a max_age of 10 minutes and has not succeeded since it was registered, seconds ago
    assert {p["pipeline"]: p["max_age_s"] for p in body["pipelines"]}["report"] == 600
    assert {q["name"] for q in body["queues"]} >= {"cpu"}


# -- in a browser ---------------------------------------------------------------------------------------


def test_the_fleet_page_is_one_self_contained_file(fleet):
    base, _ = fleet
    with http.open(f"{base}/fleet", timeout=20) as res:
        page, csp = res.read(), res.headers["Content-Security-Policy"]
    assert res.status == 200 and res.headers["Content-Type"].startswith("text/html")
    assert set(re.findall(rb"https?://[^\"'`\s]+", page)) == {b"http://www.w3.org/2000/svg"}  # no CDN
    assert csp.count("'sha256-") == 3  # the page's style, the shared graph code, its own script
    assert b"function panZoom" in page  # the shared graph code is in the page, not fetched


WATCH_CSP = (
    "window.__csp = []; document.addEventListener('securitypolicyviolation',"
    " e => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));"
)


def needs_chromium() -> None:
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.skip("chromium is not installed (apt-get install chromium)")


def shot(browser: Browser, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"dashboard-{name}.png"
    data = browser.screenshot(path)
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000, path
    SHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, SHOTS / path.name)
    return path


def test_browser_filters_runs_and_opens_a_pipelines_graph(fleet, tmp_path):
    needs_chromium()
    base, runs = fleet
    browser = Browser(tmp_path / "profile", width=1400, height=1000)
    try:
        browser.call("Page.addScriptToEvaluateOnNewDocument", session=True, source=WATCH_CSP)
        browser.open(f"{base}/fleet#runs")
        browser.wait_for("document.querySelectorAll('#runrows tr[data-run]').length > 3")
        shot(browser, "fleet-runs")
        # When the operator ticks "failed", only the failed run is listed
        browser.click(f'#statuschips input[value="{RunStatus.FAILED}"]')
        browser.wait_for(
            "(() => { const r = [...document.querySelectorAll('#runrows tr[data-run]')];"
            f" return r.length === 1 && r[0].dataset.run === {json.dumps(runs['broken'][0])}; }})()"
        )
        assert "train-six" in browser.eval("document.getElementById('runrows').textContent")
        shot(browser, "fleet-runs-failed")
        # and filtered by pipeline, with 2 a page, the pages hold misc's five runs once each
        browser.click(f'#statuschips input[value="{RunStatus.FAILED}"]')
        browser.eval("document.getElementById('f-limit').value = '10'")
        browser.type_into("#f-pipeline", "misc")
        browser.wait_for("document.querySelectorAll('#runrows tr[data-run]').length === 5")
        listed = browser.eval(
            "[...document.querySelectorAll('#runrows tr[data-run]')].map(r => r.dataset.run)"
        )
        assert listed == runs["misc"][::-1]

        # When the Pipelines tab is opened and a pipeline clicked, its stage graph is drawn
        browser.click('#tabs a[data-tab="pipelines"]')
        browser.wait_for("document.querySelectorAll('#pgraph g.pnode').length >= 6")
        assert browser.eval("document.querySelectorAll('#pgraph path.edge').length") == 4
        stale = 'g.pnode[data-pipeline="report"]'
        assert browser.eval(f"document.querySelector({json.dumps(stale)}).dataset.freshness") == "stale"
        browser.click('g.pnode[data-pipeline="train-six"]')
        browser.wait_for("document.querySelectorAll('#sgraph g.snode').length === 6")
        states = browser.eval(
            "Object.fromEntries([...document.querySelectorAll('#sgraph g.snode')]"
            ".map(g => [g.dataset.stage, g.dataset.state]))"
        )
        assert states["gate"] == State.FAILED and states["extract"] == State.SUCCEEDED
        browser.eval("window.scrollTo(0, 0)")
        shot(browser, "fleet-pipelines")

        for tab, ready in (
            ("schedules", "document.querySelectorAll('#srows tr[data-schedule]').length === 2"),
            ("workers", "document.querySelectorAll('#wrows tr[data-worker]').length === 1"),
            ("health", "document.querySelector('#hhead .badge[data-state=\"healthy\"]') !== null"),
        ):
            browser.click(f'#tabs a[data-tab="{tab}"]')
            browser.wait_for(ready)
            shot(browser, f"fleet-{tab}")
        shown = browser.eval(
            "document.querySelector('tr[data-schedule=\"nightly-report\"] td[data-next]').dataset.next"
        )
        listed = {s["name"]: s for s in get(f"{base}/api/fleet/schedules")[1]["schedules"]}
        assert float(shown) == listed["nightly-report"]["next_at"]
        assert not browser.console, browser.console
        assert browser.eval("window.__csp") == []  # nothing the page does is blocked by its policy
    finally:
        browser.close()


def test_browser_run_page_fits_six_stages_at_1400px_and_shows_a_retry_within_a_second(
    cluster, fleet, tmp_path
):
    needs_chromium()
    base, runs = fleet
    run_id = runs["broken"][0]
    browser = Browser(tmp_path / "profile", width=1400, height=1000)
    try:
        browser.open(f"{base}/#run={run_id}")
        browser.wait_for("document.querySelectorAll('#dag g.node').length === 6")
        browser.wait_for("document.querySelector('#summary .badge[data-state=\"failed\"]') !== null")
        # Then the whole graph is inside its card: no horizontal scrolling, no node cut off
        fits = browser.eval(
            "(() => { const box = document.getElementById('dag').getBoundingClientRect();"
            " const main = document.getElementById('main');"
            " const nodes = [...document.querySelectorAll('#dag g.node')].map(g => g.getBoundingClientRect());"
            " return { inside: nodes.every(r => r.left >= box.left && r.right <= box.right),"
            " scroll: main.scrollWidth - main.clientWidth, widths: nodes.map(r => r.width) }; })()"
        )
        assert fits["inside"] and fits["scroll"] <= 0, fits
        shot(browser, "run-1400")
        # and dragging the graph pans it, without opening the stage under the pointer
        fitted = browser.eval("document.querySelector('#dag svg').getAttribute('viewBox')")
        x, y = browser.eval(
            "(() => { const r = document.querySelector('g.node[data-stage=\"clean\"]').getBoundingClientRect();"
            " return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        for kind, at in (
            ("mousePressed", x),
            ("mouseMoved", x + 40),
            ("mouseMoved", x + 120),
            ("mouseReleased", x + 120),
        ):
            browser.call(
                "Input.dispatchMouseEvent", session=True, type=kind, x=at, y=y, button="left", clickCount=1
            )
        assert browser.eval("document.querySelector('#dag svg').getAttribute('viewBox')") != fitted
        assert browser.eval("document.getElementById('stagecard').hidden") is True
        # and the zoom buttons zoom in and fit again
        browser.click("#zoomslot button[title='zoom in']")
        zoomed = browser.eval("document.querySelector('#dag svg').getAttribute('viewBox')")
        browser.click("#zoomslot button[title^='fit']")
        assert browser.eval("document.querySelector('#dag svg').getAttribute('viewBox')") == fitted != zoomed

        # When the operator presses Retry, the page shows the retried run within a second
        browser.type_into("#token", TOKEN)
        browser.eval(
            "window.__seen = null; document.getElementById('act-retry').addEventListener('click',"
            " () => { window.__clicked = performance.now(); }, { capture: true });"
            " (function watch() { const b = document.querySelector('#summary .badge');"
            " if (window.__clicked && !window.__seen && b && b.dataset.state !== 'failed'"
            " && document.getElementById('act-retry').disabled) window.__seen = performance.now();"
            " requestAnimationFrame(watch); })()"
        )
        assert browser.eval("document.getElementById('act-retry').disabled") is False
        browser.click("#act-retry")
        browser.wait_for("window.__seen !== null", timeout=10)
        took_ms = browser.eval("window.__seen - window.__clicked")
        state = browser.eval("document.querySelector('#summary .badge').dataset.state")
        assert took_ms <= 1000, took_ms
        assert state == RunStatus.RUNNING
        assert cluster.client.store.runs.run_status(run_id) in (RunStatus.RUNNING, RunStatus.SUCCEEDED)
        browser.wait_for("document.querySelector('g.node[data-stage=\"gate\"]').dataset.state === 'running'")
        shot(browser, "run-1400-retried")
        print(f"Retry shown on the page {took_ms:.0f} ms after the click")
    finally:
        browser.close()
    assert cluster.client.handle(run_id).wait(timeout=60).status == RunStatus.SUCCEEDED
