"""`chordflow flower`: a real Flower process on the test Redis shows stage tasks by type,
behind basic auth."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from orchestration.fleet.embedded import free_port

from .conftest import ARTIFACTS, ROOT, pipeline, wait_until

CHORDFLOW = [sys.executable, "-m", "orchestration"]
AUTH = "admin:s3cret-pass"


def _get(url: str, auth: str | None = AUTH) -> tuple[int, bytes]:
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


@pytest.fixture
def flower(cluster) -> Iterator[str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHORDFLOW_", "FLOWER_"))}
    env.update(PYTHONPATH=str(ROOT), CHORDFLOW_REDIS_URL=cluster.server.url, CHORDFLOW_FLOWER_BASIC_AUTH=AUTH)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with open(ARTIFACTS / f"flower-{os.getpid()}.log", "wb") as log:
        proc = subprocess.Popen(
            [*CHORDFLOW, "flower", "--port", str(port)],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _get(f"{base}/healthcheck", auth=None)[0] == 200, timeout=30, interval=0.2)
        # Flower only knows the tasks whose events it received: wait until its event
        # consumer has seen the worker's heartbeat before running anything.
        wait_until(lambda: b"worker-heartbeat" in _get(f"{base}/workers?json=1")[1], timeout=30, interval=0.2)
        yield base
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_flower_lists_stage_tasks_by_type_with_run_and_stage_ids(cluster, flower):
    # Given Flower running on the fleet's Redis, when a pipeline of two stage types runs
    result = cluster.run(
        pipeline(
            "flowered",
            {"id": "first", "uses": "noop"},
            {"id": "second", "uses": "sleep", "params": {"seconds": 0.1}, "needs": ["first"]},
        )
    )
    assert result.success

    # Then Flower's API lists one task per stage, named stage.<type>, with the run and stage ids in its
    # args, and (once their task-succeeded events arrive) their success
    def stage_tasks() -> dict[str, dict]:
        status, body = _get(f"{flower}/api/tasks")
        assert status == 200, body
        tasks = [t for t in json.loads(body).values() if result.run_id in str(t.get("args"))]
        done = len(tasks) >= 2 and all(t["state"] == "SUCCESS" for t in tasks)
        return {t["name"]: t for t in tasks} if done else {}

    tasks = wait_until(stage_tasks, timeout=30, interval=0.3)
    assert set(tasks) == {"stage.noop", "stage.sleep"}
    assert "'first'" in tasks["stage.noop"]["args"] and "'second'" in tasks["stage.sleep"]["args"]
    # `second` ran in place, after `first` in the same task (workers/execution.py): the pool process
    # announced it as a task of its own, whose parent is `first`'s
    assert tasks["stage.sleep"]["uuid"] == tasks["stage.noop"]["uuid"] + "+second"
    assert tasks["stage.sleep"]["parent_id"] == tasks["stage.noop"]["uuid"]


def test_flower_refuses_requests_without_the_basic_auth_password(flower):
    assert _get(f"{flower}/api/tasks", auth=None)[0] == 401
    assert _get(f"{flower}/api/tasks", auth="admin:wrong")[0] == 401
    assert _get(f"{flower}/", auth=None)[0] == 401


def _run_tasks(flower: str, run_id: str) -> list[dict]:
    status, body = _get(f"{flower}/api/tasks")
    assert status == 200, body
    return [t for t in json.loads(body).values() if run_id in str(t.get("args"))]


def _task_events_flowing(cluster, flower: str) -> None:
    """Flower turns task events on in the workers it sees (every few seconds): run a no-op until
    Flower has seen one of its tasks end."""

    def seen() -> bool:
        result = cluster.run(pipeline("flower-warmup", {"id": "w", "uses": "noop"}))
        try:
            return bool(
                wait_until(
                    lambda: any(t["state"] == "SUCCESS" for t in _run_tasks(flower, result.run_id)),
                    timeout=3,
                    interval=0.3,
                )
            )
        except AssertionError:
            return False

    wait_until(seen, timeout=60, interval=0.1)


def test_flower_shows_failed_attempts_as_failure_and_retried_ones_as_retry(cluster, flower):
    _task_events_flowing(cluster, flower)
    # Given a stage that fails twice with its retry policy allowing two attempts
    result = cluster.run(
        pipeline(
            "flower-failures",
            {
                "id": "shaky",
                "uses": "fail",
                "params": {"times": -1, "message": "no route to the database"},
                "retry": {"max_attempts": 2, "backoff": "fixed", "delay": 0.1},
            },
        )
    )
    assert result.status == "failed"

    # Then Flower's API has the first attempt as RETRY and the second as FAILURE, each with its error
    def both() -> list[dict]:
        tasks = _run_tasks(flower, result.run_id)
        states = sorted(t["state"] for t in tasks)
        return tasks if states == ["FAILURE", "RETRY"] and all(t.get("exception") for t in tasks) else []

    tasks = {t["state"]: t for t in wait_until(both, timeout=30, interval=0.3)}
    assert "RuntimeError: no route to the database (attempt 1)" in tasks["RETRY"]["exception"]
    assert "RuntimeError: no route to the database (attempt 2)" in tasks["FAILURE"]["exception"]
    assert all(t["name"] == "stage.fail" for t in tasks.values())

    # and a stage that succeeds is still SUCCESS
    ok = cluster.run(pipeline("flower-ok", {"id": "fine", "uses": "noop"}))
    wait_until(
        lambda: [t["state"] for t in _run_tasks(flower, ok.run_id)] == ["SUCCESS"], timeout=30, interval=0.3
    )

    # and the worker logged each as one INFO line, with no traceback for an ordinary stage failure
    log = (ARTIFACTS / f"worker-{os.getpid()}-w0.log").read_text(errors="replace")
    failed_task = tasks["FAILURE"]["uuid"]
    lines = [line for line in log.splitlines() if failed_task in line]
    assert lines and all("INFO/" in line for line in lines), lines
    assert "raised expected: AttemptFailed" in "\n".join(lines)
    assert "Traceback" not in log.split(failed_task, 1)[1].split("\n[", 2)[0]
