"""Following a run: `watch` reads the run's stream to its real end (across `retry`), and the live
`--follow` screen, read in a real terminal (tmux), ticks on a timer, never drops the last event,
prints its final table once and says that Ctrl-C leaves the run going."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest
import yaml

from .conftest import ROOT, Cluster, pipeline, wait_until
from .test_observability_logs import OBSERVE, chordflow, cli_env, submit

TMUX = shutil.which("tmux")


@pytest.fixture(scope="module")
def fleet(bare_cluster) -> Cluster:
    bare_cluster.start_worker(hostname="w0", concurrency=3, env=OBSERVE)
    return bare_cluster


def test_watch_after_retry_follows_the_run_to_its_real_end(fleet):
    # Given a run that failed (item 1 fails while its gate key exists)...
    gate = f"watch-{uuid.uuid4().hex[:8]}"
    fleet.redis.set(f"test:gate:{gate}", 1)
    run_id = submit(
        fleet,
        {"id": "list", "uses": "noop", "params": {"output": [0, 1]}},
        {
            "id": "each",
            "uses": "test.item_gate",
            "needs": ["list"],
            "for_each": "list",
            "params": {"fail_item": 1, "gate": gate},
            "retry": {"max_attempts": 1},
        },
        name="watch-retry",
    )
    assert fleet.client.follow(run_id, timeout_s=60) == "failed"
    # ... and was retried once its cause was fixed
    fleet.redis.delete(f"test:gate:{gate}")
    retried = chordflow(fleet, "retry", run_id, "--json")
    assert retried.returncode == 0 and json.loads(retried.stdout)["outcome"] == "retrying"
    assert fleet.client.follow(run_id, timeout_s=60) == "succeeded"

    # When `watch` replays it, it reads past the first end to the real one
    watched = chordflow(fleet, "watch", run_id)
    assert watched.returncode == 0, watched.stdout + watched.stderr
    lines = watched.stdout.splitlines()
    ends = [line for line in lines if re.search(r"\d  run (failed|succeeded|running)", line)]
    assert [e.split("  run ")[1] for e in ends] == ["running", "failed", "running (retry)", "succeeded"]
    assert lines[-1] == f"run {run_id} succeeded"

    # and with --json: each event as a typed object on its line, then the run's status
    objects = [json.loads(line) for line in chordflow(fleet, "watch", run_id, "--json").stdout.splitlines()]
    runs = [o["event"]["state"] for o in objects if "event" in o and o["event"]["kind"] == "run"]
    assert runs == ["running", "failed", "running", "succeeded"]
    assert objects[-1]["status"]["status"] == "succeeded"
    first = objects[0]["event"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT[\d:.]+Z", first["t"])

    # and status shows the first round's attempts too, typed
    status = json.loads(chordflow(fleet, "status", run_id, "--json", "--items").stdout)
    each = status["stages"]["each"]
    assert each["error"] is None and each["state"] == "succeeded"
    item1 = next(i for i in each["items"] if i["index"] == 1)
    assert [(a["round"], a["outcome"]) for a in item1["attempt_history"]] == [(0, "failed"), (1, "succeeded")]
    assert item1["host"] == "w0" and item1["error"] is None
    assert [h["state"] for h in each["history"]] == ["failed"]  # the first round's record, typed
    assert each["history"][0]["error"]["message"] == "item 1 is gated"


# -- the live screen, in a real terminal ---------------------------------------------------------------


class Tmux:
    """A private tmux server (its own socket) running commands in detached sessions."""

    def __init__(self) -> None:
        assert TMUX
        self.socket = f"chordflow-test-{os.getpid()}-{uuid.uuid4().hex[:6]}"

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
        command = f"env {exports} {shlex.join(argv)}; echo EXIT=$?; sleep 600"
        subprocess.run(
            [TMUX, "-L", self.socket, "new-session", "-d", "-s", name, "-x", "160", "-y", "45", command],
            check=True,
            timeout=30,
        )

    def screen(self, name: str, history: bool = False) -> str:
        argv = [TMUX, "-L", self.socket, "capture-pane", "-p", "-J", "-t", name]
        if history:
            argv += ["-S", "-3000"]
        return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=30).stdout

    def keys(self, name: str, *keys: str) -> None:
        subprocess.run([TMUX, "-L", self.socket, "send-keys", "-t", name, *keys], check=True, timeout=30)

    def stop(self) -> None:
        subprocess.run([TMUX, "-L", self.socket, "kill-server"], check=False, capture_output=True, timeout=30)


@pytest.fixture
def tmux() -> Iterator[Tmux]:
    if TMUX is None:
        pytest.skip("tmux is not installed")
    terminal = Tmux()
    yield terminal
    terminal.stop()


def _file(tmp_path, name: str, *stages: dict) -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(pipeline(name, *stages)), encoding="utf-8")
    return str(path)


def _terminal_env(cluster: Cluster) -> dict[str, str]:
    return {"CHORDFLOW_REDIS_URL": cluster.server.url, "PYTHONPATH": str(ROOT)}


ELAPSED = re.compile(r"stages \(\d+%\) · ([\d.]+)s")


def test_the_follow_screen_ticks_and_shows_events_that_came_close_together(fleet, tmux, tmp_path):
    # Given `submit --follow` in a terminal, on a run whose first stage ends and whose second one
    # starts within milliseconds, then runs for 30 s
    file = _file(
        tmp_path,
        "ticking",
        {"id": "first", "uses": "noop"},
        {"id": "second", "uses": "sleep", "params": {"seconds": 30}, "needs": ["first"]},
    )
    tmux.start(
        "follow", [sys.executable, "-m", "orchestration", "submit", file, "--follow"], _terminal_env(fleet)
    )
    screen = wait_until(
        lambda: (
            (s := tmux.screen("follow")) and ELAPSED.search(s) and re.search(r"second\s+│\s+running", s) and s
        ),
        timeout=60,
        interval=0.2,
    )
    run_id = re.search(r"run (r[0-9a-f]+)", screen).group(1)
    try:
        # Then both close events are on the screen: first succeeded, second running
        assert re.search(r"first\s+│\s+succeeded", screen), screen

        # and, read twice 2 s apart during the long stage, the elapsed time has moved
        before = float(ELAPSED.search(tmux.screen("follow")).group(1))
        time.sleep(2)
        later_screen = tmux.screen("follow")
        after = float(ELAPSED.search(later_screen).group(1))
        assert after - before >= 1.5, (before, after, later_screen)
        assert re.search(r"second\s+│\s+running", later_screen)

        # When the user presses Ctrl-C, it says the run goes on, and it does
        tmux.keys("follow", "C-c")
        stopped = wait_until(lambda: (s := tmux.screen("follow")) and "EXIT=" in s and s, timeout=30)
        assert "EXIT=130" in stopped and f"stopped following run {run_id}; the run goes on" in stopped
        assert f"chordflow cancel {run_id}" in stopped
        assert fleet.client.store.runs.run_status(run_id) == "running"
    finally:
        fleet.client.cancel(run_id)


def test_the_final_table_is_printed_once(fleet, tmux, tmp_path):
    file = _file(tmp_path, "once", {"id": "only", "uses": "sleep", "params": {"seconds": 1}})
    tmux.start(
        "once", [sys.executable, "-m", "orchestration", "submit", file, "--follow"], _terminal_env(fleet)
    )
    wait_until(lambda: "EXIT=" in tmux.screen("once"), timeout=60, interval=0.2)
    everything = tmux.screen("once", history=True)
    assert "EXIT=0" in everything
    assert sum("┃ stage" in line for line in everything.splitlines()) == 1, everything
    assert re.search(r"only\s+│\s+succeeded", everything)


def test_submit_wait_timeout_exits_3_and_the_run_goes_on(fleet, tmp_path):
    file = _file(tmp_path, "slow", {"id": "slow", "uses": "sleep", "params": {"seconds": 20}})
    done = subprocess.run(
        [sys.executable, "-m", "orchestration", "submit", file, "--wait", "--timeout", "1"],
        env=cli_env(fleet),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 3, done.stdout + done.stderr
    run_id = re.search(r"run (r[0-9a-f]+) submitted", done.stdout).group(1)
    assert "did not finish within 1.0s" in done.stderr and "it goes on" in done.stderr
    assert fleet.client.store.runs.run_status(run_id) == "running"
    fleet.client.cancel(run_id)
