"""What the tests of pipelines that depend on pipelines share (tests/integration/test_pipelines_*.py):
the `chordflow` command as a subprocess, pipeline files, runs of a pipeline, and workers started
without the test stage module (so nothing but Chordflow itself listens for a run's end)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from orchestration.fleet.embedded import WorkerProcess

from .conftest import ARTIFACTS, ROOT

CHORDFLOW = [sys.executable, "-m", "orchestration"]


def env_for(url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHORDFLOW_")}
    return {**env, "PYTHONPATH": str(ROOT), "CHORDFLOW_REDIS_URL": url, "COLUMNS": "250", **extra}


def chordflow(cluster: Any, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CHORDFLOW, *map(str, args)],
        check=False,
        cwd=ROOT,
        env=env_for(cluster.server.url),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def chordflow_json(cluster: Any, *args: str) -> Any:
    done = chordflow(cluster, *args, "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


def write(tmp_path: Path, name: str, stages: list[dict] | None = None, **fields: Any) -> Path:
    """A pipeline file `name` (one noop stage unless `stages`), with top-level `fields`."""
    path = tmp_path / f"{name}-{len(list(tmp_path.glob(f'{name}*.yaml')))}.yaml"
    data = {"name": name, **fields, "stages": stages or [{"id": "only", "uses": "noop"}]}
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


FAILING = [{"id": "broken", "uses": "fail", "params": {"times": -1}}]


def runs_of(cluster: Any, pipeline: str) -> list[dict[str, str]]:
    """The run records of `pipeline`, oldest first."""
    ids = cluster.redis.zrange(f"{cluster.settings.key_prefix}:pipeline:{pipeline}:runs", 0, -1)
    return [cluster.redis.hgetall(f"{cluster.settings.key_prefix}:run:{run_id}") for run_id in ids]


def plain_worker(
    cluster: Any,
    name: str,
    imports: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    concurrency: int = 2,
) -> WorkerProcess:
    """A worker serving every queue, importing only `imports` (not tests.stages, whose hooks listen
    for every run's end); stopped with the cluster."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    worker = WorkerProcess(
        cluster.server.url,
        ("cpu", "gpu", "highmem"),
        concurrency,
        hostname=name,
        imports=imports,
        env={"PYTHONPATH": str(ROOT), **(env or {})},
        log_path=str(ARTIFACTS / f"worker-{os.getpid()}-{name}.log"),
        loglevel="INFO",
    ).start()
    cluster.workers.append(worker)
    cluster.wait_workers(hostnames=[name])
    return worker
