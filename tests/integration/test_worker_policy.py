"""The worker's policy, end to end on a real redis-server with a password and real worker processes:
no Redis password in a shell stage, shell disabled or allowlisted, capped output and logs, a capped
context value, and cancel killing the shell command of a running attempt (docs/security.md)."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestration.api import Client
from orchestration.engine.store import connect
from orchestration.fleet.embedded import RedisServer
from orchestration.language.validation import validate_data
from orchestration.settings import Settings

from .conftest import Cluster, pipeline, wait_until

PASSWORD = "Pol1cy-s3cret-pw"


@pytest.fixture(scope="module")
def secret_cluster(tmp_path_factory) -> Iterator[Cluster]:
    """A redis-server that requires a password; each test starts (and stops) its own worker."""
    with RedisServer(password=PASSWORD) as server:
        cluster = Cluster(server, tmp_path_factory.mktemp("policy"))
        cluster.settings = Settings(redis_url=server.url)
        cluster.client = Client(cluster.settings)
        cluster.redis = connect(cluster.settings)  # a client of its own, with the password
        try:
            yield cluster
        finally:
            cluster.stop()


@pytest.fixture
def worker_with(secret_cluster):
    started = []

    def start(env: dict[str, str] | None = None, concurrency: int = 2):
        worker = secret_cluster.start_worker(
            hostname=f"policy{len(secret_cluster.workers)}", env=env, concurrency=concurrency
        )
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


def _everything_a_user_sees(cluster: Cluster, run_id: str) -> str:
    status = cluster.client.status(run_id)
    logs = {sid: cluster.client.store.logs.log_text(run_id, sid) for sid in status["stages"]}
    return json.dumps(status) + json.dumps(logs)


def test_a_shell_stage_does_not_see_the_workers_redis_password(secret_cluster, worker_with):
    worker_with()
    assert PASSWORD in os.environ.get("CHORDFLOW_REDIS_URL", "") or PASSWORD in secret_cluster.server.url
    result = secret_cluster.run(
        pipeline(
            "no-secrets",
            {
                "id": "printenv",
                "run": ["printenv", "CHORDFLOW_REDIS_URL"],
                "critical": False,
                "retry": {"max_attempts": 1},
            },
            {"id": "dump", "run": ["env"]},
            {
                "id": "ours",
                "run": ["printenv", "CHORDFLOW_RUN_ID", "CHORDFLOW_STAGE_ID", "MINE"],
                "env": {"MINE": "given"},
            },
            fail_fast=False,
        )
    )
    stages = result.stage_results
    assert stages["printenv"]["state"] == "failed"  # printenv: no such variable, exit 1
    assert stages["printenv"]["error"]["exit_code"] == 1
    assert stages["dump"]["state"] == "succeeded"
    assert "CHORDFLOW_REDIS_URL" not in stages["dump"]["output"]["stdout"]
    assert stages["ours"]["output"]["stdout"].splitlines() == [result.run_id, "ours", "given"]
    assert PASSWORD not in _everything_a_user_sees(secret_cluster, result.run_id)


def test_a_worker_with_shell_disabled_fails_the_stage_with_a_clear_error(secret_cluster, worker_with):
    worker_with({"CHORDFLOW_SHELL_ENABLED": "false"})
    result = secret_cluster.run(
        pipeline(
            "shell-off",
            {
                "id": "leak",
                "run": ["printenv", "CHORDFLOW_REDIS_URL"],
                "retry": {"max_attempts": 3, "backoff": "fixed", "delay": 0.1},
            },
        )
    )
    assert result.status == "failed"
    stage = result.stage_results["leak"]
    assert stage["attempts"] == 1  # a policy refusal is not retried
    assert stage["error"]["type"] == "ShellDisabled"
    assert "CHORDFLOW_SHELL_ENABLED=true" in stage["error"]["message"]
    assert stage["output"] is None
    assert PASSWORD not in _everything_a_user_sees(secret_cluster, result.run_id)


def test_a_worker_with_an_allowlist_runs_only_those_programs(secret_cluster, worker_with):
    worker_with({"CHORDFLOW_SHELL_ALLOW": json.dumps(["echo", shutil.which("true")])})
    result = secret_cluster.run(
        pipeline(
            "shell-allow",
            {"id": "ok", "run": ["echo", "allowed"]},
            {"id": "ok_path", "run": [shutil.which("true")]},
            {"id": "no", "run": ["sh", "-c", "echo not allowed"], "critical": False},
            fail_fast=False,
        )
    )
    stages = result.stage_results
    assert stages["ok"]["output"]["stdout"] == "allowed"
    assert stages["ok_path"]["state"] == "succeeded"
    assert stages["no"]["state"] == "failed"
    assert stages["no"]["error"]["type"] == "ProgramNotAllowed"
    assert "'sh'" in stages["no"]["error"]["message"] and "shell_allow" in stages["no"]["error"]["message"]


def test_output_logs_and_context_values_are_capped(secret_cluster, worker_with):
    worker_with(
        {
            "CHORDFLOW_SHELL_OUTPUT_TAIL_LINES": "20",
            "CHORDFLOW_LOG_LINES_CAP": "30",
            "CHORDFLOW_CONTEXT_VALUE_CAP_BYTES": "1000",
        }
    )
    result = secret_cluster.run(
        pipeline(
            "caps",
            {"id": "seq", "run": ["seq", "1", "300000"]},
            {"id": "yes", "run": ["yes"], "timeout": 2, "retry": {"max_attempts": 1}, "critical": False},
            {"id": "chatty", "uses": "test.chatty", "params": {"lines": 500}},
            {
                "id": "big_ctx",
                "uses": "test.context_writer",
                "params": {"key": "blob", "value": "x" * 5000},
                "critical": False,
                "retry": {"max_attempts": 2, "backoff": "fixed", "delay": 0.1},
            },
            fail_fast=False,
        ),
        timeout=90,
    )
    stages = result.stage_results
    seq = stages["seq"]["output"]
    assert seq["stdout"].splitlines() == [str(i) for i in range(299981, 300001)]
    assert seq["stdout_lines_total"] == 300000
    # each attempt's log keeps its last log_lines_cap entries (its END marker among them)
    store = secret_cluster.client.store
    seq_logs = store.logs.log_text(result.run_id, "seq")
    assert seq_logs[-1] == "300000" and len(seq_logs) <= 29
    assert all(line.isdigit() or line.startswith("… ") for line in seq_logs)
    assert store.logs.attempt_log_index(result.run_id, ["seq"])["seq"][0].sent > 30  # the rest were counted

    assert stages["yes"]["error"]["type"] == "StageTimeout"  # `yes` ran 2 s into a bounded tail
    yes_logs = store.logs.log_text(result.run_id, "yes")
    assert 0 < len(yes_logs) <= 29 and set(yes_logs) <= {"y"} | {x for x in yes_logs if x.startswith("… ")}

    chatty_logs = store.logs.log_text(result.run_id, "chatty")
    assert chatty_logs[-1] == "chatty line 499" and len(chatty_logs) == 29
    assert chatty_logs == [f"chatty line {i}" for i in range(471, 500)]

    big = stages["big_ctx"]
    assert big["state"] == "failed" and big["attempts"] == 1
    assert big["error"]["type"] == "ContextValueTooLarge"
    assert "'blob'" in big["error"]["message"] and "5,002 bytes" in big["error"]["message"]
    assert "1,000 bytes" in big["error"]["message"]
    assert "blob" not in secret_cluster.client.status(result.run_id)["context"]


def _gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"  # a zombie has stopped; its reaper is elsewhere


def test_cancel_kills_the_shell_command_of_a_running_attempt(secret_cluster, worker_with, tmp_path):
    worker_with()
    pid_file = tmp_path / "child.pid"
    spec_data = pipeline(
        "cancel-shell", {"id": "long", "run": ["sh", "-c", f"echo $$ > {pid_file}; exec sleep 300"]}
    )
    handle = secret_cluster.client.submit(validate_data(spec_data))
    wait_until(lambda: pid_file.exists() and pid_file.read_text().strip(), timeout=30)
    pid = int(pid_file.read_text())
    assert not _gone(pid)
    assert handle.cancel() == "cancelled"
    try:
        wait_until(lambda: _gone(pid), timeout=5)
    finally:
        if not _gone(pid):
            os.kill(pid, 9)  # leave nothing behind, whatever the outcome
    assert secret_cluster.client.status(handle.run_id)["status"] == "cancelled"
    time.sleep(0.5)
    assert _gone(pid)


def test_a_fan_out_over_more_items_than_the_fleet_allows_fails_with_a_clear_error(
    secret_cluster, worker_with
):
    worker_with({"CHORDFLOW_MAX_FANOUT_ITEMS": "5"})
    result = secret_cluster.run(
        pipeline(
            "too-many-items",
            {"id": "src", "uses": "noop", "params": {"output": list(range(6))}},
            {"id": "each", "uses": "noop", "needs": ["src"], "for_each": "src"},
        )
    )
    assert result.status == "failed"
    error = result.stage_results["each"]["error"]
    assert error["type"] == "FanOutError" and "the limit is 5" in error["message"]
    assert secret_cluster.terminal_commits(result.run_id) == {"src": 1, "each": 1}


def test_a_condition_that_would_run_forever_fails_within_its_step_budget(secret_cluster, worker_with):
    worker_with()
    started = time.monotonic()
    # Built so that validation's static checks pass; the run-time budget stops it.
    result = secret_cluster.run(
        pipeline(
            "slow-condition",
            {"id": "src", "uses": "noop", "params": {"output": list(range(10_000))}},
            {"id": "c", "uses": "noop", "needs": ["src"], "when": "len(str([outputs.src] * 100)) > 0"},
        ),
        timeout=60,
    )
    assert time.monotonic() - started < 30
    assert result.status == "failed"
    error = result.stage_results["c"]["error"]
    assert error["type"] == "ConditionError", error
