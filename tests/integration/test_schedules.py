"""Schedules: `chordflow schedule add/list/remove`, and `chordflow beat` (RedBeat) submitting runs
through real workers, one run per tick even with two beats."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from orchestration.engine.celeryconfig import client_app
from orchestration.fleet.schedules import SUBMIT_TASK, idempotency_key, outcomes_key
from orchestration.settings import Settings
from workers.app import create_app

from .conftest import ARTIFACTS, ROOT, wait_until

CHORDFLOW = [sys.executable, "-m", "orchestration"]


def _env(url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHORDFLOW_")}
    return {**env, "PYTHONPATH": str(ROOT), "CHORDFLOW_REDIS_URL": url}


def chordflow(cluster, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CHORDFLOW, *args],
        check=False,
        cwd=ROOT,
        env=_env(cluster.server.url),
        capture_output=True,
        text=True,
        timeout=60,
    )


def write_pipeline(tmp_path: Path, name: str, **fields) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "stages": [{"id": "only", "uses": "noop"}], **fields}))
    return path


class Beat:
    def __init__(self, cluster, label: str, *flags: str):
        self.log = ARTIFACTS / f"beat-{os.getpid()}-{label}.log"
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [*CHORDFLOW, "beat", *flags],
                cwd=ROOT,
                env=_env(cluster.server.url),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def sent(self, schedule: str) -> int:
        """How many times this beat sent the schedule's task (its INFO log line per firing)."""
        return self.log.read_text(errors="replace").count(f"Sending due task {schedule} ")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


@pytest.fixture
def beats(cluster) -> Iterator[list[Beat]]:
    started: list[Beat] = []
    yield started
    for beat in started:
        beat.stop()


def runs_by_tick(cluster, schedule: str, pipeline: str) -> tuple[dict[int, str], list[str]]:
    """(tick -> run id, from the idempotency keys) and every run of the pipeline."""
    prefix = cluster.settings.key_prefix
    ticks = {
        int(key.rsplit(":", 1)[1]): cluster.redis.get(key)
        for key in cluster.redis.scan_iter(f"{prefix}:idem:schedule:{schedule}:*")
    }
    return ticks, cluster.redis.zrange(f"{prefix}:pipeline:{pipeline}:runs", 0, -1)


def assert_one_run_per_tick(ticks: dict[int, str], runs: list[str]) -> None:
    # Every run belongs to exactly one tick and no tick produced a second run.
    assert sorted(runs) == sorted(ticks.values())
    assert len(set(ticks.values())) == len(ticks)


def test_the_worker_app_serves_the_scheduled_submit_task():
    assert SUBMIT_TASK in create_app(Settings(redis_url="redis://unused")).tasks, (
        "call orchestration.schedules.register_scheduled_task(app, settings) in workers/app.py:create_app"
    )


# -- add / list / remove ---------------------------------------------------------------------------------


def test_schedule_add_list_remove(cluster, tmp_path):
    # Given a pipeline file with a cron schedule and a max_age
    path = write_pipeline(
        tmp_path, "nightly", schedule="0 19 * * *", max_age="1d", variables={"mode": "daily"}
    )

    # When it is added with an override, then a second schedule of the same file every 15 minutes
    added = chordflow(cluster, "schedule", "add", str(path), "--set", "mode=weekly")
    assert added.returncode == 0, added.stderr
    assert "schedule 'nightly' added" in added.stdout
    again = chordflow(cluster, "schedule", "add", str(path), "--every", "15m", "--name", "nightly-often")
    assert again.returncode == 0, again.stderr

    # Then both are listed with their expression, the validated pipeline and its overrides
    listed = chordflow(cluster, "schedule", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    entries = {e["name"]: e for e in json.loads(listed.stdout)}
    assert entries["nightly"]["when"] == "cron 0 19 * * *"
    assert entries["nightly"]["sets"] == {"mode": "weekly"}
    assert entries["nightly"]["max_age_s"] == 86400
    assert entries["nightly-often"]["when"] == "every 15m"
    assert entries["nightly"]["pipeline"] == entries["nightly-often"]["pipeline"] == "nightly"
    # --json times are ISO 8601 (issue 21); the next time is the cron's next 19:00 UTC
    next_at = datetime.fromisoformat(entries["nightly"]["next_at"])
    assert next_at.timestamp() > time.time() and (next_at.hour, next_at.minute, next_at.second) == (19, 0, 0)
    table = chordflow(cluster, "schedule", "list")
    assert "nightly-often" in table.stdout and "every 15m" in table.stdout

    # Re-adding replaces; removing deletes; removing again says there is none
    replaced = chordflow(cluster, "schedule", "add", str(path), "--cron", "30 6 * * mon-fri")
    assert "schedule 'nightly' updated" in replaced.stdout
    assert chordflow(cluster, "schedule", "remove", "nightly").returncode == 0
    assert chordflow(cluster, "schedule", "remove", "nightly-often").returncode == 0
    gone = chordflow(cluster, "schedule", "remove", "nightly")
    assert gone.returncode == 1 and "no schedule named 'nightly'" in gone.stderr
    assert json.loads(chordflow(cluster, "schedule", "list", "--json").stdout) == []


def test_schedule_add_refuses_bad_expressions_and_files_without_one(cluster, tmp_path):
    plain = write_pipeline(tmp_path, "plain")
    missing = chordflow(cluster, "schedule", "add", str(plain))
    assert missing.returncode == 2 and "no schedule" in missing.stderr
    bad_cron = chordflow(cluster, "schedule", "add", str(plain), "--cron", "61 * * * *")
    assert bad_cron.returncode == 2 and "61" in bad_cron.stderr
    too_fast = chordflow(cluster, "schedule", "add", str(plain), "--every", "250ms")
    assert too_fast.returncode == 2 and "shortest interval is 1s" in too_fast.stderr
    bad_file = write_pipeline(tmp_path, "badcron", schedule="every day")
    in_file = chordflow(cluster, "schedule", "add", str(bad_file))
    assert in_file.returncode == 2 and "badcron.yaml" in in_file.stderr
    assert json.loads(chordflow(cluster, "schedule", "list", "--json").stdout) == []


# -- the task beat fires ------------------------------------------------------------------------------------


def test_a_tick_delivered_twice_submits_one_run(cluster, tmp_path):
    # Given the message beat sends for one tick, delivered twice (two beats, or a redelivery)
    spec = {"name": "twice", "stages": [{"id": "only", "uses": "noop"}]}
    app = client_app(cluster.settings)
    for _ in range(2):
        app.send_task(
            SUBMIT_TASK, kwargs={"schedule": "twice", "tick": 1_700_000_000, "spec": spec}, queue="cpu"
        )
    # Then exactly one run exists, under the tick's idempotency key
    key = f"{cluster.settings.key_prefix}:idem:{idempotency_key('twice', 1_700_000_000)}"
    run_id = wait_until(lambda: cluster.redis.get(key), timeout=30)
    assert cluster.client.handle(run_id).wait(timeout=30).success
    time.sleep(1.0)  # let the second delivery be processed too
    assert cluster.redis.zrange(f"{cluster.settings.key_prefix}:pipeline:twice:runs", 0, -1) == [run_id]


def test_a_tick_whose_pipeline_cannot_run_records_why(cluster):
    spec = {"name": "unserved", "stages": [{"id": "only", "uses": "no.such.type"}]}
    client_app(cluster.settings).send_task(
        SUBMIT_TASK, kwargs={"schedule": "unserved", "tick": 1_700_000_060, "spec": spec}, queue="cpu"
    )
    outcome = wait_until(lambda: cluster.redis.hget(outcomes_key(cluster.settings), "unserved"), timeout=30)
    assert "no.such.type" in json.loads(outcome)["error"]


# -- beat --------------------------------------------------------------------------------------------------


def test_a_one_second_schedule_submits_a_run_every_second(cluster, beats, tmp_path):
    path = write_pipeline(tmp_path, "every-second")
    assert chordflow(cluster, "schedule", "add", str(path), "--every", "1s").returncode == 0
    try:
        beats.append(Beat(cluster, "single"))
        wait_until(
            lambda: len(runs_by_tick(cluster, "every-second", "every-second")[0]) >= 3,
            timeout=40,
            interval=0.2,
        )
    finally:
        chordflow(cluster, "schedule", "remove", "every-second")
    beats[0].stop()
    ticks, runs = runs_by_tick(cluster, "every-second", "every-second")
    assert_one_run_per_tick(ticks, runs)
    assert all(b - a >= 1 for a, b in zip(sorted(ticks), sorted(ticks)[1:]))
    for run_id in runs:
        assert cluster.client.handle(run_id).wait(timeout=30).success
    listed = {e["name"]: e for e in json.loads(chordflow(cluster, "schedule", "list", "--json").stdout)}
    assert "every-second" not in listed


@pytest.mark.parametrize("lock", [True, False], ids=["with-redbeat-lock", "without-lock"])
def test_two_beats_never_submit_a_tick_twice(cluster, beats, tmp_path, lock):
    name = f"two-beats-{'lock' if lock else 'nolock'}"
    path = write_pipeline(tmp_path, name)
    assert chordflow(cluster, "schedule", "add", str(path), "--every", "1s").returncode == 0
    flags = () if lock else ("--no-lock",)
    try:
        # Given two beat processes running at once on one schedule that fires every second
        beats.extend([Beat(cluster, f"{name}-a", *flags), Beat(cluster, f"{name}-b", *flags)])
        wait_until(lambda: runs_by_tick(cluster, name, name)[0], timeout=40, interval=0.1)
        started = time.monotonic()
        time.sleep(6)
    finally:
        chordflow(cluster, "schedule", "remove", name)
    elapsed = time.monotonic() - started
    for beat in beats:
        beat.stop()
    time.sleep(1.0)  # messages already sent are submitted (or refused as duplicates) by now

    # Then each tick made at most one run, about one a second, not two
    ticks, runs = runs_by_tick(cluster, name, name)
    assert_one_run_per_tick(ticks, runs)
    assert 4 <= len(runs) <= elapsed + 3
    sent = [beat.sent(name) for beat in beats]
    if lock:
        # the second beat waited for RedBeat's lock and never sent a tick
        assert min(sent) == 0, sent
    else:
        # both beats fired; what they fired twice was submitted once
        assert sum(sent) >= len(runs), sent
