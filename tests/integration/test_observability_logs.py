"""`chordflow logs`: each attempt's lines, live, with their time and level, kept when an attempt
fails or is cancelled; against a real Redis and a real worker, read through the command line."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestration.language.validation import validate_data

from .conftest import ROOT, Cluster, pipeline, wait_until

CHORDFLOW = [sys.executable, "-m", "orchestration"]
OBSERVE = {"CHORDFLOW_IMPORTS": '["tests.observe_stages"]'}


@pytest.fixture(scope="module")
def fleet(bare_cluster) -> Cluster:
    """Redis and one worker that also serves the observability test stages."""
    bare_cluster.start_worker(hostname="w0", concurrency=3, env=OBSERVE)
    return bare_cluster


def cli_env(cluster: Cluster) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHORDFLOW_")}
    return {**env, "PYTHONPATH": str(ROOT), "CHORDFLOW_REDIS_URL": cluster.server.url, "COLUMNS": "200"}


def chordflow(cluster: Cluster, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CHORDFLOW, *args], env=cli_env(cluster), capture_output=True, text=True, timeout=timeout
    )


def submit(cluster: Cluster, *stages: dict, name: str = "observe", **fields) -> str:
    return cluster.client.submit(validate_data(pipeline(name, *stages, **fields))).run_id


def script(code: str, *args: str) -> list[str]:
    """A shell stage's argv running Python `code` (unbuffered: each print is written at once)."""
    return [sys.executable, "-u", "-c", code, *args]


class Follower:
    """`chordflow logs ... --follow` in the background, each stdout line kept with when it arrived."""

    def __init__(self, cluster: Cluster, *args: str):
        self.proc = subprocess.Popen(
            [*CHORDFLOW, "logs", *args, "--follow"],
            env={**cli_env(cluster), "PYTHONUNBUFFERED": "1"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[tuple[float, str]] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append((time.time(), line.rstrip("\n")))

    def arrived(self, text: str) -> tuple[float, str] | None:
        return next(((t, line) for t, line in self.lines if text in line), None)

    def wait(self, timeout: float = 60) -> int:
        code = self.proc.wait(timeout=timeout)
        self.reader.join(timeout=5)
        return code

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def followers() -> Iterator[list[Follower]]:
    started: list[Follower] = []
    yield started
    for follower in started:
        follower.stop()


def test_a_line_is_shown_while_the_stage_still_runs_and_followed_within_a_second(fleet, tmp_path, followers):
    # Given a stage that prints a line when the test opens its gate, then sleeps 5 s
    gate = tmp_path / "gate"
    code = (
        "import os, sys, time\n"
        "print('waiting for the gate', flush=True)\n"
        "while not os.path.exists(sys.argv[1]): time.sleep(0.02)\n"
        "print('built at', repr(time.time()), flush=True)\n"
        "time.sleep(5)\n"
        "print('done', flush=True)\n"
    )
    run_id = submit(fleet, {"id": "build", "run": script(code, str(gate))}, name="live-logs")
    follower = Follower(fleet, run_id, "build")
    followers.append(follower)
    # the follower is live once it has shown the first line
    wait_until(lambda: follower.arrived("waiting for the gate"), timeout=60, interval=0.05)

    # When the stage prints its line
    gate.touch()

    # Then `logs RUN STAGE`, during the sleep, shows it: the stage is still running
    def shown() -> subprocess.CompletedProcess | None:
        done = chordflow(fleet, "logs", run_id, "build")
        return done if "built at" in done.stdout else None

    listed = wait_until(shown, timeout=10, interval=0.2)
    assert listed.returncode == 0 and fleet.client.store.runs.stage_state(run_id, "build") == "running"
    assert re.search(r"^\d\d:\d\d:\d\d\.\d{3} out\s+built at \d+\.\d+$", listed.stdout, re.MULTILINE), (
        listed.stdout
    )
    assert "== build · attempt 1 · on w0 · running" in listed.stdout

    # and `logs --follow` showed it within 1 s of the stage printing it (by the stage's own clock)
    arrival, line = wait_until(lambda: follower.arrived("built at"), timeout=10, interval=0.05)
    printed = float(line.rsplit(" ", 1)[1])
    assert arrival - printed < 1.0, f"shown {arrival - printed:.3f}s after it was printed"

    # and the follower stops by itself when the attempt ends, after its last line
    assert follower.wait(timeout=60) == 0
    assert follower.lines[-1][1].endswith("done")


def test_a_cancelled_stage_keeps_the_lines_it_printed(fleet, tmp_path):
    marker = tmp_path / "printed"
    code = (
        "import sys, time, pathlib\n"
        "for i in range(16): print('line', i, flush=True); time.sleep(0.05)\n"
        "pathlib.Path(sys.argv[1]).touch()\n"
        "time.sleep(60)\n"
    )
    run_id = submit(fleet, {"id": "loop", "run": script(code, str(marker))}, name="cancel-logs")
    wait_until(marker.exists, timeout=60, interval=0.02)

    cancelled = chordflow(fleet, "cancel", run_id, "--json")
    assert cancelled.returncode == 0, cancelled.stderr
    assert json.loads(cancelled.stdout) == {
        "run_id": run_id,
        "action": "cancel",
        "ok": True,
        "outcome": "cancelled",
        "status": "cancelled",
    }

    def all_lines() -> str | None:
        out = chordflow(fleet, "logs", run_id, "loop").stdout
        return out if "line 15" in out else None

    out = wait_until(all_lines, timeout=15, interval=0.3)
    assert [int(n) for n in re.findall(r"out\s+line (\d+)", out)] == list(range(16))
    assert "cancelled" in out.splitlines()[0]


def test_failed_attempts_keep_their_logs_each_under_its_attempt(fleet):
    run_id = submit(
        fleet,
        {"id": "flaky", "uses": "observe.flaky", "params": {"fail_times": 2}},
        {"id": "never", "uses": "observe.flaky", "params": {"fail_times": 9}, "critical": False},
        name="failed-logs",
    )
    fleet.client.follow(run_id, timeout_s=60)

    out = chordflow(fleet, "logs", run_id, "flaky").stdout
    headers = [line for line in out.splitlines() if line.startswith("==")]
    assert headers == [
        "== flaky · attempt 1 · on w0 · retried: ConnectionError: attempt 1: the service hung up",
        "== flaky · attempt 2 · on w0 · retried: ConnectionError: attempt 2: the service hung up",
        "== flaky · attempt 3 · on w0 · succeeded",
    ]
    assert out.count("connecting") == 3 and out.count("connected") == 1

    second = chordflow(fleet, "logs", run_id, "flaky", "--attempt", "2").stdout
    assert "attempt 2: connecting" in second and "attempt 1" not in second and "attempt 3" not in second

    never = chordflow(fleet, "logs", run_id, "never").stdout
    assert [line.split(" · ")[-1] for line in never.splitlines() if line.startswith("==")] == [
        "retried: ConnectionError: attempt 1: the service hung up",
        "retried: ConnectionError: attempt 2: the service hung up",
        "failed: ConnectionError: attempt 3: the service hung up",
    ]


def test_ctx_log_lines_are_formatted_with_their_level_and_typed_in_json(fleet):
    run_id = submit(
        fleet,
        {"id": "items", "uses": "observe.items", "params": {"n": 3}},
        {"id": "each", "uses": "observe.item_logger", "needs": ["items"], "for_each": "items"},
        name="formatted-logs",
    )
    fleet.client.follow(run_id, timeout_s=60)

    out = chordflow(fleet, "logs", run_id, "items").stdout
    assert re.search(r"INFO\s+making 3 items$", out, re.MULTILINE) and "%s" not in out
    assert re.search(r"WARN\s+for tests only$", out, re.MULTILINE)

    lines = [
        json.loads(line) for line in chordflow(fleet, "logs", run_id, "items", "--json").stdout.splitlines()
    ]
    made = next(line for line in lines if line["line"] == "making 3 items")
    assert (
        made["level"] == "INFO" and made["attempt"] == 1 and made["item"] is None and made["stage"] == "items"
    )
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", made["t"])

    one = chordflow(fleet, "logs", run_id, "each", "--item", "1").stdout
    assert "== each[1] · attempt 1 · on w0 · succeeded" in one and "item 1 of the fan-out" in one
    assert "item 0 of" not in one and "item 2 of" not in one


def test_logs_of_a_stage_the_run_does_not_have_is_an_error(fleet):
    run_id = submit(fleet, {"id": "build", "uses": "noop"}, name="no-such-stage")
    fleet.client.follow(run_id, timeout_s=60)
    done = chordflow(fleet, "logs", run_id, "biuld")
    assert done.returncode == 2
    assert f"run {run_id} has no stage 'biuld' (did you mean 'build'?)" in done.stderr
    assert chordflow(fleet, "logs", run_id, "--attempt", "1").returncode == 2  # --attempt needs a STAGE
    assert chordflow(fleet, "logs", "r-no-such-run", "build").returncode == 1


def test_log_streams_are_capped_and_expire_with_the_run_ttl(fleet):
    run_id = submit(fleet, {"id": "chatty", "uses": "test.chatty", "params": {"lines": 30}}, name="ttl-logs")
    fleet.client.follow(run_id, timeout_s=60)
    stream = fleet.client.store.keys.log_stream(run_id, "chatty", None, 1)
    assert 0 < fleet.redis.ttl(stream) <= int(fleet.settings.run_ttl_s)
    assert fleet.redis.xlen(stream) == 30 + 2  # the lines, BEGIN and END
    index = fleet.client.store.keys.log_index(run_id, "chatty")
    assert 0 < fleet.redis.ttl(index) <= int(fleet.settings.run_ttl_s)
    assert Path(ROOT / "tests" / "observe_stages.py").exists()
