"""A real redis-server on a free port and real worker processes, per test module."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from orchestration.api import Client
from orchestration.fleet.embedded import RedisServer, WorkerProcess, wait_for_workers
from orchestration.language.validation import validate_data
from orchestration.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "tests" / "artifacts"


class Cluster:
    def __init__(self, server: RedisServer, tmp: Path):
        self.server = server
        self.tmp = tmp
        self.settings = Settings(redis_url=server.url)
        self.client = Client(self.settings)
        self.redis = redis.Redis.from_url(server.url, decode_responses=True)
        self.workers: list[WorkerProcess] = []

    def start_worker(
        self,
        queues=("cpu", "gpu", "highmem"),
        concurrency: int = 2,
        hostname: str | None = None,
        gpus: int | None = None,
        env: dict[str, str] | None = None,
        wait: bool = True,
        pool: str = "prefork",
        memory_gb: float | None = None,
    ) -> WorkerProcess:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        name = hostname or f"w{len(self.workers)}"
        worker = WorkerProcess(
            self.server.url,
            queues,
            concurrency,
            hostname=name,
            imports=["tests.stages"],
            gpus=gpus,
            env={"PYTHONPATH": str(ROOT), "CHORDFLOW_TEST_HOST": name, **(env or {})},
            log_path=str(ARTIFACTS / f"worker-{os.getpid()}-{name}.log"),
            loglevel="INFO",
            pool=pool,
            memory_gb=memory_gb,
        ).start()
        self.workers.append(worker)
        if wait:
            self.wait_workers(hostnames=[name])
        return worker

    def wait_workers(self, count: int = 1, hostnames: tuple[str, ...] | list[str] = ()) -> None:
        wait_for_workers(self.redis, self.settings.key_prefix, count, timeout_s=60, hostnames=hostnames)

    def run(self, data: dict, timeout: float = 60, **submit):
        spec = validate_data(data)
        handle = self.client.submit(spec, **submit)
        return handle.wait(timeout=timeout)

    def count(self, run_id: str, stage_id: str) -> int:
        return int(self.redis.get(f"test:count:{run_id}:{stage_id}") or 0)

    def terminal_commits(self, run_id: str) -> dict[str, int]:
        """How many times each stage reached a terminal state, by the run's event stream
        (exactly once each, when every stage was committed once)."""
        counts: dict[str, int] = {}
        for _, fields in self.redis.xrange(f"{self.settings.key_prefix}:run:{run_id}:events"):
            if fields.get("kind") == "stage" and fields.get("state") not in ("running", "retrying", "queued"):
                counts[fields["stage"]] = counts.get(fields["stage"], 0) + 1
        return counts

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()


@pytest.fixture(scope="module")
def bare_cluster(tmp_path_factory) -> Iterator[Cluster]:
    """Redis and no workers: the test starts the workers it needs."""
    with RedisServer() as server:
        c = Cluster(server, tmp_path_factory.mktemp("cluster"))
        try:
            yield c
        finally:
            c.stop()


@pytest.fixture(scope="module")
def cluster(bare_cluster) -> Cluster:
    """Redis and one worker serving every queue with 3 processes."""
    bare_cluster.start_worker(concurrency=3)
    return bare_cluster


def pipeline(name: str, *stages: dict, **fields) -> dict:
    return {"name": name, "stages": list(stages), **fields}


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not reached in time")
