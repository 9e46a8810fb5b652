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


def test_flower_refuses_requests_without_the_basic_auth_password(flower):
    assert _get(f"{flower}/api/tasks", auth=None)[0] == 401
    assert _get(f"{flower}/api/tasks", auth="admin:wrong")[0] == 401
    assert _get(f"{flower}/", auth=None)[0] == 401
