"""The read and control commands against a real Redis and worker: status shows every attempt
(and only the current error, and cache hits), typed JSON everywhere, `runs --since` durations,
`--json` on the control commands, `worker --import` from the current directory, `graph RUN`."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from orchestration.states import RunStatus

from .conftest import Cluster, wait_until
from .test_observability_logs import OBSERVE, chordflow, cli_env, submit

ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


@pytest.fixture(scope="module")
def fleet(bare_cluster) -> Cluster:
    bare_cluster.start_worker(hostname="w0", concurrency=3, env=OBSERVE)
    return bare_cluster


def test_status_shows_each_attempt_and_the_error_only_while_it_is_current(fleet):
    run_id = submit(
        fleet, {"id": "flaky", "uses": "observe.flaky", "params": {"fail_times": 2}}, name="attempts"
    )
    assert fleet.client.follow(run_id, timeout_s=60) == "succeeded"

    shown = chordflow(fleet, "status", run_id)
    assert shown.returncode == 0
    stage_row = next(
        line for line in shown.stdout.splitlines() if line.startswith("│ flaky") and "×3" in line
    )
    assert "succeeded" in stage_row and "ConnectionError" not in stage_row  # no stale error on success
    attempts = [line for line in shown.stdout.splitlines() if line.startswith("│ flaky") and "×3" not in line]
    assert len(attempts) == 3
    assert all("w0" in row and re.search(r"\d\d:\d\d:\d\d .*\d\d:\d\d:\d\d", row) for row in attempts)
    assert "retried" in attempts[0] and "ConnectionError: attempt 1: the service hung up" in attempts[0]
    assert "retried" in attempts[1] and "attempt 2: the service hung up" in attempts[1]
    assert "succeeded" in attempts[2] and "ConnectionError" not in attempts[2]

    data = json.loads(chordflow(fleet, "status", run_id, "--json").stdout)
    flaky = data["stages"]["flaky"]
    assert flaky["error"] is None and flaky["attempts"] == 3 and flaky["tries"] == 3
    first = flaky["attempt_history"][0]
    assert first["outcome"] == "retried" and first["host"] == "w0" and first["attempt"] == 1
    assert first["error"]["type"] == "ConnectionError" and first["error"]["retryable"] is True
    assert ISO.fullmatch(first["started_at"]) and ISO.fullmatch(first["finished_at"])
    assert isinstance(first["duration_s"], float)
    assert ISO.fullmatch(data["created_at"]) and ISO.fullmatch(flaky["started_at"])


def test_cache_hits_are_shown(fleet):
    stage = {"id": "cached", "uses": "noop", "params": {"output": 42}, "cache": {"ttl": "1h"}}
    first = submit(fleet, stage, name="cache-shown")
    fleet.client.follow(first, timeout_s=60)
    second = submit(fleet, stage, name="cache-shown")
    fleet.client.follow(second, timeout_s=60)
    table = chordflow(fleet, "status", second).stdout
    assert re.search(r"│ cached\s+│ succeeded.*cache hit", table), table
    data = json.loads(chordflow(fleet, "status", second, "--json").stdout)["stages"]["cached"]
    assert data["cached"] is True and data["attempt_history"][-1]["outcome"] == "cache hit"
    assert (
        json.loads(chordflow(fleet, "status", first, "--json").stdout)["stages"]["cached"]["cached"] is False
    )


def test_runs_gives_typed_json_and_takes_durations_and_known_states(fleet):
    run_id = submit(fleet, {"id": "a", "uses": "noop"}, name="listed")
    fleet.client.follow(run_id, timeout_s=60)
    listed = chordflow(fleet, "runs", "--pipeline", "listed", "--since", "1h", "--json")
    assert listed.returncode == 0, listed.stderr
    (record,) = json.loads(listed.stdout)
    assert record["run_id"] == run_id and record["status"] == "succeeded"
    assert ISO.fullmatch(record["created_at"]) and ISO.fullmatch(record["finished_at"])
    assert isinstance(record["duration_s"], float) and record["total"] == 1
    assert (
        json.loads(chordflow(fleet, "runs", "--pipeline", "listed", "--status", "failed", "--json").stdout)
        == []
    )
    bogus = chordflow(fleet, "runs", "--status", "bogus")
    assert bogus.returncode == 2 and all(s.value in bogus.stderr for s in RunStatus)
    assert chordflow(fleet, "runs", "--since", "1 fortnight").returncode == 2


def test_control_commands_answer_in_json(fleet):
    run_id = submit(fleet, {"id": "slow", "uses": "sleep", "params": {"seconds": 30}}, name="controlled")
    wait_until(lambda: fleet.client.store.runs.stage_state(run_id, "slow") == "running", timeout=60)

    def control(*args: str) -> tuple[int, dict]:
        done = chordflow(fleet, *args, run_id, "--json")
        return done.returncode, json.loads(done.stdout)

    assert control("pause") == (
        0,
        {"run_id": run_id, "action": "pause", "ok": True, "outcome": "paused", "status": "paused"},
    )
    code, again = control("pause")
    assert code == 1 and again["ok"] is False and again["outcome"] == "not paused: the run is paused"
    assert control("resume")[1]["status"] == "running"
    assert control("cancel")[1]["status"] == "cancelled"
    code, retried = control("retry")
    assert code == 0 and retried["outcome"] == "retrying" and retried["status"] == "running"
    assert control("cancel")[1]["outcome"] == "cancelled"


def test_worker_import_finds_a_module_in_the_current_directory(fleet, tmp_path):
    # Given a module of stage types in the directory the console script is started in
    (tmp_path / "mystages.py").write_text(
        "from orchestration import stage\n\n\n@stage('mine.hello')\ndef hello(ctx):\n    return 'hi'\n",
        encoding="utf-8",
    )
    script = Path(sys.executable).parent / "chordflow"
    assert script.exists()
    env = {k: v for k, v in cli_env(fleet).items() if k != "PYTHONPATH"}  # as a user would run it
    log = tmp_path / "worker.log"
    with open(log, "wb") as out:
        worker = subprocess.Popen(
            [str(script), "worker", "--import", "mystages", "--hostname", "importer", "-Q", "cpu", "-c", "1"],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        # Then it serves them
        def serving() -> bool:
            assert worker.poll() is None, log.read_text(errors="replace")[-3000:]
            info = fleet.client.store.fleet.live_workers().get("importer/main", {})
            return any(t["name"] == "mine.hello" for t in info.get("types", []))

        wait_until(serving, timeout=60, interval=0.3)
        assert "ModuleNotFoundError" not in log.read_text(errors="replace")
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()


def test_graph_of_a_run_is_coloured_by_stage_state(fleet):
    run_id = submit(
        fleet,
        {"id": "good", "uses": "noop"},
        {"id": "bad", "uses": "fail", "params": {"times": -1}, "retry": {"max_attempts": 1}},
        {"id": "after", "uses": "noop", "needs": ["bad"]},
        name="graphed",
        fail_fast=False,
    )
    assert fleet.client.follow(run_id, timeout_s=60) == "failed"
    mermaid = chordflow(fleet, "graph", run_id)
    assert mermaid.returncode == 0, mermaid.stderr
    assert "classDef succeeded fill:#a3cfbb" in mermaid.stdout and "classDef failed" in mermaid.stdout
    assert "(upstream_failed)" in mermaid.stdout
    dot = chordflow(fleet, "graph", run_id, "--format", "dot").stdout
    assert re.search(r'label="bad\\nfail\\n\(failed\)".*fillcolor="#f1aeb5"', dot)
    svg = chordflow(fleet, "graph", run_id, "--format", "svg").stdout
    assert svg.startswith("<svg") and 'data-stage="good" data-state="succeeded"' in svg
    assert 'data-stage="bad" data-state="failed"' in svg
    assert chordflow(fleet, "graph", run_id, "--select", "good").returncode == 2
    assert chordflow(fleet, "graph", "r-no-such-run").returncode == 1
