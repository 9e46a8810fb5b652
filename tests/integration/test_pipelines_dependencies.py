"""A pipeline that depends on another is refused until the other's last run succeeded, recently
enough: `submit` exits 4 naming each unmet dependency with its last status and age, `--force`
runs it anyway (and the run says so), `--wait-for-deps` waits, a scheduled tick is recorded as
skipped with the reason, and `chordflow pipelines` shows freshness. Real Redis, real workers."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time

import pytest

from orchestration.errors import DependenciesNotMet
from orchestration.language.validation import load_pipeline

from .conftest import ARTIFACTS, ROOT, wait_until
from .pipelines_support import (
    CHORDFLOW,
    FAILING,
    chordflow,
    chordflow_json,
    env_for,
    plain_worker,
    runs_of,
    write,
)


@pytest.fixture(scope="module")
def fleet(bare_cluster):
    plain_worker(bare_cluster, "deps", concurrency=2)
    return bare_cluster


def submitted_run(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)["run_id"]


def test_b_is_refused_until_a_succeeded_and_force_runs_it_anyway(fleet, tmp_path):
    a = write(tmp_path, "dep-a")
    a_failing = write(tmp_path, "dep-a", FAILING)
    b = write(tmp_path, "dep-b", depends_on=[{"pipeline": "dep-a", "max_age": "1h"}])
    for path in (a, b):
        assert chordflow(fleet, "pipelines", "add", path).returncode == 0

    # Given A never ran: B is refused, exit 4, naming A and why
    refused = chordflow(fleet, "submit", b)
    assert refused.returncode == 4, refused.stdout + refused.stderr
    assert "dep-a: never ran" in refused.stderr
    assert runs_of(fleet, "dep-b") == []
    # ... from the Python API too
    with pytest.raises(DependenciesNotMet) as raised:
        fleet.client.submit(load_pipeline(b))
    assert raised.value.exit_code == 4 and raised.value.unmet == ["dep-a: never ran"]

    # When A succeeds, B runs
    assert chordflow(fleet, "submit", "--wait", a).returncode == 0
    ran = chordflow(fleet, "submit", "--wait", b)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert [r["status"] for r in runs_of(fleet, "dep-b")] == ["succeeded"]

    # When A's last run failed, B is refused again, saying so (an older success does not count)
    assert chordflow(fleet, "submit", "--wait", a_failing).returncode == 1
    refused = chordflow(fleet, "submit", b)
    assert refused.returncode == 4
    assert "dep-a: last run failed" in refused.stderr and "last success" in refused.stderr

    # --force runs it anyway, and the run record says so
    forced = submitted_run(chordflow(fleet, "submit", "--force", "--json", b))
    assert fleet.client.handle(forced).wait(timeout=120).success
    origin = chordflow_json(fleet, "status", forced)["origin"]
    assert origin["forced"]["unmet"][0].startswith("dep-a: last run failed")
    shown = chordflow(fleet, "status", forced)
    assert "forced: dep-a: last run failed" in shown.stdout, shown.stdout


def test_a_stale_dependency_names_its_age_and_max_age(fleet, tmp_path):
    upstream = write(tmp_path, "fresh-up")
    downstream = write(tmp_path, "fresh-down", depends_on=[{"pipeline": "fresh-up", "max_age": "2s"}])
    assert chordflow(fleet, "submit", "--wait", upstream).returncode == 0
    assert chordflow(fleet, "submit", "--wait", downstream).returncode == 0  # fresh
    time.sleep(3.5)
    refused = chordflow(fleet, "submit", downstream)
    assert refused.returncode == 4
    assert re.search(r"fresh-up: last success \d+ s ago, older than 2 s", refused.stderr), refused.stderr


def test_a_required_asset_must_have_been_provided(fleet, tmp_path):
    maker = write(tmp_path, "asset-maker", provides=["cubes"], max_age="1h")
    user = write(tmp_path, "asset-user", requires=["cubes"])
    assert chordflow(fleet, "pipelines", "add", maker).returncode == 0
    refused = chordflow(fleet, "submit", user)
    assert refused.returncode == 4
    assert "asset cubes: never provided (provided by asset-maker)" in refused.stderr
    assert chordflow(fleet, "submit", "--wait", maker).returncode == 0
    assert chordflow(fleet, "submit", "--wait", user).returncode == 0
    provided = {row["asset"]: row for row in chordflow_json(fleet, "assets")}
    assert provided["cubes"]["last"]["pipeline"] == "asset-maker"
    assert provided["cubes"]["last"]["run_id"] == runs_of(fleet, "asset-maker")[-1]["run_id"]
    assert provided["cubes"]["freshness"] == "fresh"


def test_wait_for_deps_waits_until_they_are_met(fleet, tmp_path):
    up = write(tmp_path, "wait-up")
    down = write(tmp_path, "wait-down", depends_on=["wait-up"])

    # Nothing comes: it gives up after --timeout, exit 4
    gave_up = chordflow(fleet, "submit", "--wait-for-deps", "--timeout", "2", down)
    assert gave_up.returncode == 4 and "wait-up: never ran" in gave_up.stderr

    # A run of the upstream comes: it submits then
    waiting = subprocess.Popen(
        [*CHORDFLOW, "submit", "--wait-for-deps", "--timeout", "120", "--json", str(down)],
        cwd=ROOT,
        env=env_for(fleet.server.url),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(2)
        assert waiting.poll() is None and runs_of(fleet, "wait-down") == []
        assert chordflow(fleet, "submit", "--wait", up).returncode == 0
        out, err = waiting.communicate(timeout=120)
    finally:
        if waiting.poll() is None:
            waiting.kill()
    assert waiting.returncode == 0, err
    assert [r["run_id"] for r in runs_of(fleet, "wait-down")] == [json.loads(out)["run_id"]]


def test_a_scheduled_tick_with_unmet_dependencies_is_recorded_as_skipped(fleet, tmp_path):
    scheduled = write(tmp_path, "tick-b", depends_on=[{"pipeline": "tick-a", "max_age": "1h"}])
    assert chordflow(fleet, "schedule", "add", scheduled, "--every", "1s").returncode == 0
    log = ARTIFACTS / f"beat-{os.getpid()}-pipelines.log"
    with open(log, "wb") as out:
        beat = subprocess.Popen(
            [*CHORDFLOW, "beat"],
            cwd=ROOT,
            env=env_for(fleet.server.url),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        skipped = wait_until(lambda: [r for r in runs_of(fleet, "tick-b") if r["status"] == "skipped"], 60)
    finally:
        assert chordflow(fleet, "schedule", "remove", "tick-b").returncode == 0
        os.killpg(beat.pid, signal.SIGTERM)
        beat.wait(timeout=30)
    assert all(r["status"] == "skipped" for r in runs_of(fleet, "tick-b"))  # none ran
    run_id = skipped[0]["run_id"]
    why = "dependencies not met: tick-a: never ran"

    # `runs` lists it as skipped; `status` says why
    listed = {r["run_id"]: r for r in chordflow_json(fleet, "runs", "--pipeline", "tick-b")}
    assert listed[run_id]["status"] == "skipped"
    assert "skipped" in chordflow(fleet, "runs", "--pipeline", "tick-b").stdout
    assert chordflow_json(fleet, "status", run_id)["origin"] == {"schedule": "tick-b", "skipped": why}
    assert f"skipped, not started: {why}" in chordflow(fleet, "status", run_id).stdout
    # the schedule's pipeline is in the registry, its last run skipped with the reason
    row = {r["pipeline"]: r for r in chordflow_json(fleet, "pipelines")}["tick-b"]
    assert row["last_run"]["status"] == "skipped" and row["last_run"]["reason"] == why
    assert row["unmet"] == ["tick-a: never ran"]


def test_pipelines_shows_freshness_by_max_age_and_depends_on(fleet, tmp_path):
    source = write(tmp_path, "list-up", max_age="1h")
    sink = write(tmp_path, "list-down", depends_on=[{"pipeline": "list-up", "max_age": "2s"}])
    for path in (source, sink):
        assert chordflow(fleet, "pipelines", "add", path).returncode == 0
    assert chordflow(fleet, "submit", "--wait", source).returncode == 0

    rows = {r["pipeline"]: r for r in chordflow_json(fleet, "pipelines")}
    # list-up's own max_age is 1h, but list-down needs it within 2s: 2s is its limit
    assert rows["list-up"]["freshness"] == "fresh" and rows["list-up"]["max_age_s"] == 2.0
    assert rows["list-down"]["unmet"] == [] and rows["list-down"]["freshness"] == "-"
    time.sleep(3)
    rows = {r["pipeline"]: r for r in chordflow_json(fleet, "pipelines")}
    assert rows["list-up"]["freshness"] == "stale"
    assert rows["list-down"]["unmet"][0].startswith("list-up: last success")
    table = chordflow(fleet, "pipelines").stdout
    line = next(line for line in table.splitlines() if "list-up" in line and "list-down" not in line)
    assert "stale (max 2 s)" in line, table
