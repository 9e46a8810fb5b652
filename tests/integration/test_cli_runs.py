"""The command line against real processes: the embedded quickstart, submit-and-exit, status."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import psutil
import yaml

from orchestration.language.validation import validate_data

from .conftest import ROOT, pipeline, wait_until

CHORDFLOW = [sys.executable, "-m", "orchestration"]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHORDFLOW_")}
    return {**env, "PYTHONPATH": str(ROOT), **extra}


def _processes_using(url: str) -> list[psutil.Process]:
    port = url.rsplit(":", 1)[1].split("/")[0]
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            cmdline = " ".join(proc.info["cmdline"] or [])
            if f"--port {port}" in cmdline or proc.environ().get("CHORDFLOW_REDIS_URL") == url:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def test_quickstart_runs_end_to_end_with_no_redis_configured():
    done = subprocess.run(
        [*CHORDFLOW, "submit", "examples/quickstart.yaml"],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    out = done.stdout
    assert done.returncode == 0, done.stderr + out
    # each stage's state as it goes, then the outputs
    for stage in ("hello", "items", "each", "pause", "report"):
        assert re.search(rf"\b{stage} running\b", out), out
        assert re.search(rf"\b{stage} succeeded\b", out), out
    assert "hello from chordflow" in out
    assert "each: [1, 2, 3, 4, 5]" in out
    assert "succeeded" in out.splitlines()[-1]
    url = re.search(r"\((redis://[^)]+)\)", out).group(1)
    wait_until(lambda: not _processes_using(url), timeout=10)


def test_submit_returns_at_once_and_another_process_follows_the_run(cluster, tmp_path):
    # Given a 500-stage pipeline: 50 chains of 10
    stages = []
    for c in range(50):
        for i in range(10):
            stages.append({"id": f"c{c}s{i}", "uses": "noop", **({"needs": [f"c{c}s{i - 1}"]} if i else {})})
    spec_data = pipeline("five-hundred", *stages)
    spec = validate_data(spec_data)
    started = time.perf_counter()
    handle = cluster.client.submit(spec)
    took = time.perf_counter() - started
    assert took < 1.0, f"submit of 500 stages took {took:.2f}s"
    cluster.client.follow(handle.run_id, timeout_s=120)

    # When a separate process submits and exits at once
    path = tmp_path / "five-hundred.yaml"
    path.write_text(yaml.safe_dump(spec_data))
    env = _env(CHORDFLOW_REDIS_URL=cluster.server.url)
    done = subprocess.run(
        [*CHORDFLOW, "submit", str(path), "--json"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    run_id = json.loads(done.stdout)["run_id"]

    # Then the run still finishes, and `status` from yet another process follows it
    def finished() -> dict | None:
        st = subprocess.run(
            [*CHORDFLOW, "status", run_id, "--json"], env=env, capture_output=True, text=True, timeout=60
        )
        data = json.loads(st.stdout)
        return data if data["status"] in ("succeeded", "failed") else None

    data = wait_until(finished, timeout=120, interval=0.5)
    assert data["status"] == "succeeded"
    assert len(data["stages"]) == 500
    first = data["stages"]["c0s0"]
    assert {"state", "attempts", "host", "queue", "started_at", "finished_at", "error", "output"} <= set(
        first
    )
    assert all(s["state"] == "succeeded" and s["attempts"] == 1 for s in data["stages"].values())


def test_status_of_an_unknown_run_is_a_clear_error(cluster):
    env = _env(CHORDFLOW_REDIS_URL=cluster.server.url)
    done = subprocess.run([*CHORDFLOW, "status", "nope"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "no run 'nope'" in done.stderr
    assert "Traceback" not in done.stderr


def test_watch_logs_runs_and_stages_commands(cluster):
    result = cluster.run(
        pipeline(
            "cli-reads",
            {"id": "say", "run": ["echo", "from the shell"]},
            {"id": "after", "uses": "noop", "needs": ["say"]},
        )
    )
    env = _env(CHORDFLOW_REDIS_URL=cluster.server.url, COLUMNS="200")

    def chordflow(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*CHORDFLOW, *args], env=env, capture_output=True, text=True, timeout=60)

    watched = chordflow("watch", result.run_id)
    assert watched.returncode == 0, watched.stderr
    assert "2/2 stages (100%)" in watched.stdout
    assert "run " + result.run_id + " succeeded" in watched.stdout

    logs = chordflow("logs", result.run_id, "say")
    assert logs.returncode == 0 and "from the shell" in logs.stdout

    listed = json.loads(chordflow("runs", "--pipeline", "cli-reads", "--json").stdout)
    assert [r["run_id"] for r in listed] == [result.run_id] and listed[0]["status"] == "succeeded"
    assert (
        json.loads(chordflow("runs", "--status", "failed", "--pipeline", "cli-reads", "--json").stdout) == []
    )

    types = {t["name"]: t for t in json.loads(chordflow("stages", "--json").stdout)}
    assert {"shell", "noop", "test.flaky"} <= set(types)
    assert types["test.flaky"]["retry"]["max_attempts"] == 3 and "cpu" in types["test.flaky"]["queues"]
