"""One seed of the failover test: a Sentinel cluster, two workers, the workload, the nemeses, the check.

    primary + 2 replicas + 3 Sentinels (tests/sentinel_cluster.py: AOF, down-after 1000 ms)
    2 `chordflow worker` processes, concurrency 2, `--import tests.ha.stages`, through redis+sentinel://
    a wave of the five pipelines of pipelines.py, then the nemesis plan of the seed: before each
    fault another wave, and the fault 0.3-1.2 s into it (nemesis.STRIKE_AFTER_WAVE_S)
    then: wait (at most FINAL_WITHIN_S after the last fault) for every run to end, read the final
    state through the current primary, and check it against what was recorded (checker.py)

Everything a seed writes is under its own directory: the stages' records, the acks, the runs the
client was given, the worker logs (kept for a failure's post-mortem).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from orchestration.api import Client
from orchestration.errors import NotReplicated
from orchestration.fleet.embedded import WorkerProcess, wait_for_workers
from orchestration.settings import Settings
from tests.integration.conftest import ROOT
from tests.sentinel_cluster import SentinelCluster

from . import checker, history, nemesis
from .final_state import RUN_FINAL, read_final_state
from .pipelines import DELAY_SET_THRESHOLD_S, workload

FINAL_WITHIN_S = 120.0
SWEEP_GRACE_S = 10.0
SECOND_WAVE_S = 1.0  # the first two waves overlap, so the first fault meets the two at work

#: Short leases so a lost holder is noticed in seconds; the retry paths and sweep sped up to match.
WORKER_ENV = {
    "CHORDFLOW_LEASE_S": "3",
    "CHORDFLOW_HEARTBEAT_S": "0.5",
    "CHORDFLOW_MAX_DELIVERIES": "8",
    "CHORDFLOW_OUTBOX_GRACE_S": "2",
    "CHORDFLOW_DELAY_SET_THRESHOLD_S": f"{DELAY_SET_THRESHOLD_S:g}",
    "CHORDFLOW_SWEEP_S": "2",
    "CHORDFLOW_SWEEP_GRACE_S": f"{SWEEP_GRACE_S:g}",
}


@dataclass
class SeedResult:
    seed: int
    replicas_ack: int
    report: checker.Report
    fired: list[nemesis.Fired]
    history: history.History
    seconds: float
    dir: Path
    started: float  # time.time() of the first submit: the faults' times are shown from it
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        faults = "\n".join(f"  {f.kind} at +{f.at - self.started:.1f}s: {f.detail}" for f in self.fired)
        return (
            f"seed {self.seed} (CHORDFLOW_REPLICAS_ACK={self.replicas_ack}) in {self.seconds:.0f} s, "
            f"{len(self.history.executions)} executions, {len(self.history.acks)} acks, "
            f"{len(self.history.given_runs)} runs; files in {self.dir}\n{faults}\n{self.report}"
            + "".join(f"\nnote: {n}" for n in self.notes)
        )


class Fleet:
    """The workers of a seed: started, killed (SIGKILL) and replaced."""

    def __init__(self, url: str, env: dict[str, str], logs: Path):
        self.url, self.env, self.logs = url, env, logs
        self.workers: list[WorkerProcess] = []
        self.started = 0
        self.lock = threading.Lock()

    def start(self) -> WorkerProcess:
        with self.lock:
            name = f"ha{self.started}"
            self.started += 1
            worker = WorkerProcess(
                self.url,
                concurrency=2,
                hostname=name,
                imports=["tests.ha.stages"],
                env={"PYTHONPATH": str(ROOT), **self.env},
                log_path=str(self.logs / f"worker-{name}.log"),
                loglevel="INFO",
            ).start()
            self.workers.append(worker)
            return worker

    def alive(self) -> list[WorkerProcess]:
        return [w for w in self.workers if w.proc is not None and w.proc.poll() is None]

    def kill(self, index: int) -> str:
        victim = self.alive()[index]
        pid = victim.proc.pid if victim.proc else None
        victim.kill()
        self.start()
        return f"SIGKILL worker pid {pid} (process group), started worker #{self.started - 1}"

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()


def _submit(client: Client, spec: Any, submitted: Path, deadline_s: float = 60.0) -> str:
    """Submit, trying again through a failover; the id is recorded once the client has it."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            run_id = client.submit(spec).run_id
            break
        except (redis.RedisError, OSError, NotReplicated):  # not acknowledged: a user submits again
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    with submitted.open("a") as f:
        f.write(json.dumps({"run": run_id, "submitted": True, "pipeline": spec.name}) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return run_id


def _statuses(cluster: SentinelCluster, prefix: str, run_ids: list[str]) -> dict[str, str | None]:
    r = cluster.primary_client()
    return {run_id: r.hget(f"{prefix}:run:{run_id}", "status") for run_id in run_ids}


def _wait_final(cluster: SentinelCluster, prefix: str, run_ids: list[str], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if all(s in RUN_FINAL for s in _statuses(cluster, prefix, run_ids).values()):
                return
        except (redis.RedisError, RuntimeError, StopIteration):
            pass  # mid-failover
        time.sleep(0.5)


def _keep_server_logs(cluster: SentinelCluster, into: Path) -> None:
    """Each data node's and Sentinel's log (role changes, syncs, votes), before the cluster's
    directory goes with it."""
    into.mkdir(exist_ok=True)
    for node in [*cluster.nodes, *cluster.sentinels]:
        log = node.dir / "server.log"
        if log.exists():
            shutil.copyfile(log, into / f"{node.dir.name}-{node.port}.log")


def _unfinished(r: redis.Redis, prefix: str, run_ids: list[str]) -> list[str]:
    """What a run that did not end looks like in Redis, for the post-mortem: its record, and every
    stage not ended with its hash."""
    notes = []
    for run_id in run_ids:
        record = r.hgetall(f"{prefix}:run:{run_id}")
        if record.get("status") in RUN_FINAL:
            continue
        states = r.hgetall(f"{prefix}:run:{run_id}:states")
        open_stages = {
            sid: {"state": state, **r.hgetall(f"{prefix}:run:{run_id}:stage:{sid}")}
            for sid, state in states.items()
            if state not in ("succeeded", "failed", "skipped", "cancelled", "upstream_failed", "fallback")
        }
        shown = {k: record.get(k) for k in ("pipeline", "status", "remaining", "created_at")}
        notes.append(
            f"run {run_id} not final: {json.dumps(shown)}; open stages {json.dumps(open_stages)[:2000]}"
        )
    return notes


def _keep_final(r: redis.Redis, prefix: str, run_ids: list[str], into: Path) -> None:
    """Every run's outputs and stage hashes as the final primary has them, for a post-mortem."""
    with into.open("w") as f:
        for run_id in run_ids:
            stages = r.hgetall(f"{prefix}:run:{run_id}:states")
            record = {
                "run": run_id,
                "outputs": r.hgetall(f"{prefix}:run:{run_id}:outputs"),
                "stages": {sid: r.hgetall(f"{prefix}:run:{run_id}:stage:{sid}") for sid in stages},
            }
            f.write(json.dumps(record) + "\n")


def run_seed(
    base: Path, seed: int, replicas_ack: int, kinds: tuple[str, ...] | None = None, sentinel: bool = True
) -> SeedResult:
    """Run one seed end to end; `kinds`: this exact nemesis plan instead of the seed's own;
    `sentinel=False`: everyone uses the first primary's plain URL (no failover can be followed)."""
    began = time.monotonic()
    base.mkdir(parents=True, exist_ok=True)
    records, acks, submitted = base / "records", base / "acks.jsonl", base / "submitted.jsonl"
    records.mkdir(exist_ok=True)
    steps = nemesis.plan(seed, kinds)
    ack_env = {"CHORDFLOW_REPLICAS_ACK": str(replicas_ack), "CHORDFLOW_TEST_ACK_LOG": str(acks)}
    with SentinelCluster(replicas=2, master_name="ha") as cluster:
        env = {**WORKER_ENV, **ack_env, "HA_RECORD_DIR": str(records)}
        url = cluster.url if sentinel else f"redis://127.0.0.1:{cluster.primary.port}/0"
        fleet = Fleet(url, env, base)
        saved = {k: os.environ.get(k) for k in ack_env}
        os.environ.update(ack_env)  # the submitter's own settings (acknowledged run ids)
        try:
            settings = Settings(redis_url=url)
            for _ in range(2):
                fleet.start()
            wait_for_workers(cluster.primary_client(), settings.key_prefix, 2, timeout_s=90)
            client = Client(settings)
            rng = random.Random(seed)
            nem = nemesis.Nemesis(cluster, fleet.kill, lambda: len(fleet.alive()), rng)
            started = time.time()
            run_ids = [_submit(client, spec, submitted) for spec in workload()]
            time.sleep(SECOND_WAVE_S)
            # every fault meets work: a wave before it (the runs of a wave end in seconds)
            nem.between = lambda: run_ids.extend(_submit(client, spec, submitted) for spec in workload())
            faults = threading.Thread(target=nem.run, args=(steps,), daemon=True)
            faults.start()
            faults.join(timeout=240)
            _wait_final(cluster, settings.key_prefix, run_ids, FINAL_WITHIN_S)
            time.sleep(1.0)  # what the ack log's last writers were fsyncing
            final = read_final_state(cluster.primary_client(), settings.key_prefix, run_ids)
            stuck = _unfinished(cluster.primary_client(), settings.key_prefix, run_ids)
            _keep_final(cluster.primary_client(), settings.key_prefix, run_ids, base / "final.jsonl")
        finally:
            fleet.stop()
            _keep_server_logs(cluster, base / "redis-logs")
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        recorded = history.load(records, acks, submitted)
        report = checker.check(recorded, final, SWEEP_GRACE_S)
        result = SeedResult(
            seed, replicas_ack, report, nem.fired, recorded, time.monotonic() - began, base, started
        )
        if faults.is_alive():
            result.notes.append("the nemesis thread did not finish its plan")
        result.notes += stuck
        if nem.error:
            result.notes.append(f"the nemesis plan stopped: {nem.error}")
        (base / "summary.txt").write_text(result.summary() + "\n")
        return result
