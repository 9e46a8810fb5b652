"""Chordflow against plain Celery canvas, on the same Redis and the same worker processes.

    python benchmarks/bench_execution.py [--repeat 3] [--quick] [--workloads chain200,lattice100]
                                         [--concurrency 2] [--pool prefork] [--py-spy DIR] [--out FILE]

One run starts one redis-server and one worker (`python -m workers`, prefork, concurrency 2 by
default) that imports `benchmarks.plain_tasks` and has a result backend on the same Redis, so
plain Celery tasks (`bench.*`) and Chordflow stages (`stage.noop`) are served by the same
processes from the same queue. Each workload then runs alternately as plain Celery and as a
Chordflow pipeline, `--repeat` times (the order flips each repeat), after one small warm-up
of each. Medians are reported.

Wall clock runs from just before `apply_async` / `Client.submit` to the moment the client
learns the end: plain Celery's last task RPUSHes a key the benchmark BLPOPs; Chordflow's
`client.follow(run_id)` returns when the run's event stream says it ended. Building the
canvas or validating the spec is outside the timed region; submitting it (for Chordflow:
resolve, type check, storing the run, sending the roots) is inside.

Workloads (see benchmarks/README.md):
  chain200    a chain of 200 no-op stages
  fanout2000  one stage outputs list(range(2000)); a for_each stage runs a no-op per item
  lattice100  10 layers of 10 no-ops, node (l, j) needs (l-1, j) and (l-1, (j+1) % 10);
              plain Celery is driven by a hand-written dispatcher in this process
  chain800    a chain of 800 no-op stages

Per workload it prints plain and Chordflow medians, their ratio, the overhead per stage
(wall / no-op stages), Chordflow's makespan from the recorded stage times, and the Redis
commands per stage (INFO commandstats, whole server, so it includes the worker's own
polling and events). JSON with every sample goes to benchmarks/results/execution-<date>.json.
"""

from __future__ import annotations

import argparse
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
from collections.abc import Callable
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

from orchestration.api import Client
from orchestration.fleet.embedded import RedisServer, WorkerProcess, wait_for_workers
from orchestration.language.spec import PipelineSpec
from orchestration.language.validation import validate_data
from orchestration.settings import Settings

RESULTS = ROOT / "benchmarks" / "results"
TIMEOUT_S = 600.0
TARGET_RATIO = 1.5
AIM_RATIO = 1.2


# -- the machinery ------------------------------------------------------------------------------
class Bench:
    """One redis-server, one worker, a Chordflow client and a raw Redis client."""

    def __init__(self, redis_url: str, worker_pid: int | None = None):
        self.url = redis_url
        self.worker = psutil.Process(worker_pid) if worker_pid else None
        # redis-py 8 defaults to a 5 s socket timeout, shorter than a plain 800-link chain's BLPOP.
        self.r = redis.Redis.from_url(redis_url, decode_responses=True, socket_timeout=TIMEOUT_S + 30)
        self.client = Client(Settings(redis_url=redis_url, result_backend=redis_url))
        self.app = self.client.app

    def key(self, what: str) -> str:
        return f"bench:{what}:{uuid.uuid4().hex[:12]}"

    def sig(self, name: str, *args: Any) -> celery.Signature:
        return self.app.signature(f"bench.{name}", args=args, immutable=True)

    def blpop(self, key: str) -> str:
        got = self.r.blpop([key], timeout=TIMEOUT_S)
        if got is None:
            raise TimeoutError(f"no signal on {key} within {TIMEOUT_S:.0f}s")
        return str(got[1])

    def commandstats(self) -> dict[str, int]:
        return {
            name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in self.r.info("commandstats").items()
        }

    def worker_cpu(self) -> float:
        """CPU seconds used so far by the worker's main process and its pool processes."""
        if self.worker is None:
            return 0.0
        total = 0.0
        for proc in [self.worker, *self.worker.children(recursive=True)]:
            try:
                t = proc.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
        return total

    def redis_cpu(self) -> float:
        info = self.r.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    def quiesce(self, timeout_s: float = 30.0) -> None:
        """Wait until the broker queue is empty and nothing is unacked, then a short pause."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.r.llen("cpu") == 0 and self.r.zcard("unacked_index") == 0:
                break
            time.sleep(0.05)
        time.sleep(0.2)


@dataclass
class Sample:
    wall_s: float
    submit_s: float
    makespan_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    redis_calls: dict[str, int] = field(default_factory=dict)


def _delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    out = {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0) > 0}
    out.pop("info", None)
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def run_chordflow(bench: Bench, spec: PipelineSpec) -> Sample:
    t0 = time.perf_counter()
    handle = bench.client.submit(spec)
    t1 = time.perf_counter()
    status = bench.client.follow(handle.run_id, timeout_s=TIMEOUT_S)
    t2 = time.perf_counter()
    if status != "succeeded":
        raise RuntimeError(f"Chordflow run {handle.run_id} ended {status}")
    result = bench.client.result(handle.run_id)
    started = [s["started_at"] for s in result.stage_results.values() if s["started_at"]]
    finished = [s["finished_at"] for s in result.stage_results.values() if s["finished_at"]]
    makespan = max(finished) - min(started) if started and finished else None
    record = bench.client.store.run(handle.run_id)
    server = float(record["finished_at"]) - float(record["created_at"])
    return Sample(t2 - t0, t1 - t0, makespan, {"run_id": handle.run_id, "server_s": round(server, 4)})


# -- workloads ------------------------------------------------------------------------------------
@dataclass
class Workload:
    name: str
    description: str
    units: int  # no-op stages (per-stage overhead = wall / units)
    plain: Callable[[Bench], Sample]
    spec: PipelineSpec

    def chordflow(self, bench: Bench) -> Sample:
        return run_chordflow(bench, self.spec)


def chain_spec(n: int) -> PipelineSpec:
    stages = [
        {"id": f"s{i:04d}", "uses": "noop", **({"needs": [f"s{i - 1:04d}"]} if i else {})} for i in range(n)
    ]
    return validate_data({"name": f"bench-chain-{n}", "stages": stages})


def plain_chain(n: int) -> Callable[[Bench], Sample]:
    def run(bench: Bench) -> Sample:
        key = bench.key("chain")
        canvas = chain(*[bench.sig("noop") for _ in range(n)], bench.sig("push", key))
        t0 = time.perf_counter()
        canvas.apply_async()
        t1 = time.perf_counter()
        bench.blpop(key)
        return Sample(time.perf_counter() - t0, t1 - t0)

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


def plain_fanout(n: int) -> Callable[[Bench], Sample]:
    def run(bench: Bench) -> Sample:
        key = bench.key("chord")
        canvas = chord(group(bench.sig("noop_result", i) for i in range(n)), bench.sig("push", key))
        t0 = time.perf_counter()
        canvas.apply_async()
        t1 = time.perf_counter()
        bench.blpop(key)
        return Sample(time.perf_counter() - t0, t1 - t0)

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


def plain_lattice(layers: int, width: int) -> Callable[[Bench], Sample]:
    """DESIGN §3's hand-written dispatcher: each task RPUSHes its id when done; this process BLPOPs
    and sends every child whose parents are all done, through one producer connection."""
    deps = lattice_ids(layers, width)
    kids: dict[str, list[str]] = {sid: [] for sid in deps}
    for sid, needs in deps.items():
        for parent in needs:
            kids[parent].append(sid)

    def run(bench: Bench) -> Sample:
        key = bench.key("lattice")
        left = {sid: len(needs) for sid, needs in deps.items()}
        roots = [sid for sid, n in left.items() if n == 0]
        t0 = time.perf_counter()
        with bench.app.producer_or_acquire() as producer:
            for sid in roots:
                bench.sig("push", key, sid).apply_async(producer=producer)
            t1 = time.perf_counter()
            done = 0
            while done < len(deps):
                sid = bench.blpop(key)
                done += 1
                for child in kids[sid]:
                    left[child] -= 1
                    if left[child] == 0:
                        bench.sig("push", key, child).apply_async(producer=producer)
        return Sample(time.perf_counter() - t0, t1 - t0)

    return run


def workloads() -> dict[str, Workload]:
    return {
        w.name: w
        for w in (
            Workload("chain200", "chain of 200 no-op stages", 200, plain_chain(200), chain_spec(200)),
            Workload(
                "fanout2000", "fan-out of 2,000 no-op items", 2000, plain_fanout(2000), fanout_spec(2000)
            ),
            Workload(
                "lattice100",
                "100-stage diamond lattice (10 layers of 10, 2 parents each)",
                100,
                plain_lattice(10, 10),
                lattice_spec(10, 10),
            ),
            Workload("chain800", "chain of 800 no-op stages", 800, plain_chain(800), chain_spec(800)),
        )
    }


def warmups() -> list[Workload]:
    return [
        Workload("warm-chain", "", 10, plain_chain(10), chain_spec(10)),
        Workload("warm-fanout", "", 50, plain_fanout(50), fanout_spec(50)),
        Workload("warm-lattice", "", 9, plain_lattice(3, 3), lattice_spec(3, 3)),
    ]


# -- running and reporting ------------------------------------------------------------------------
def measure(bench: Bench, wl: Workload, system: str) -> Sample:
    bench.quiesce()
    before = bench.commandstats()
    worker_cpu, redis_cpu = bench.worker_cpu(), bench.redis_cpu()
    cpu = time.process_time()
    sample = wl.plain(bench) if system == "plain" else wl.chordflow(bench)
    sample.extra["client_cpu_s"] = round(time.process_time() - cpu, 4)
    # Counted from just before the submit to after the (untimed) client.result() reads, which
    # cost the client and Redis a little but not the worker.
    sample.extra["worker_cpu_s"] = round(bench.worker_cpu() - worker_cpu, 4)
    sample.extra["redis_cpu_s"] = round(bench.redis_cpu() - redis_cpu, 4)
    sample.redis_calls = _delta(before, bench.commandstats())
    return sample


def median(values: list[float]) -> float:
    return statistics.median(values)


def summarize(wl: Workload, samples: dict[str, list[Sample]]) -> dict[str, Any]:
    plain = median([s.wall_s for s in samples["plain"]])
    flow = median([s.wall_s for s in samples["chordflow"]])
    spans = [s.makespan_s for s in samples["chordflow"] if s.makespan_s is not None]
    calls = {sys_: median([sum(s.redis_calls.values()) for s in samples[sys_]]) for sys_ in samples}
    return {
        "workload": wl.name,
        "description": wl.description,
        "stages": wl.units,
        "plain_s": round(plain, 4),
        "chordflow_s": round(flow, 4),
        "ratio": round(flow / plain, 3),
        "plain_ms_per_stage": round(plain * 1000 / wl.units, 3),
        "chordflow_ms_per_stage": round(flow * 1000 / wl.units, 3),
        "chordflow_makespan_s": round(median(spans), 4) if spans else None,
        "chordflow_submit_s": round(median([s.submit_s for s in samples["chordflow"]]), 4),
        "plain_submit_s": round(median([s.submit_s for s in samples["plain"]]), 4),
        "redis_calls_per_stage": {k: round(v / wl.units, 1) for k, v in calls.items()},
        "cpu_ms_per_stage": {
            sys_: {
                part: round(median([s.extra[f"{part}_cpu_s"] for s in samples[sys_]]) * 1000 / wl.units, 3)
                for part in ("worker", "redis", "client")
            }
            for sys_ in samples
        },
        "samples": {
            sys_: [
                {
                    "wall_s": round(s.wall_s, 4),
                    "submit_s": round(s.submit_s, 4),
                    "makespan_s": None if s.makespan_s is None else round(s.makespan_s, 4),
                    **s.extra,
                    "redis_calls": s.redis_calls,
                }
                for s in ss
            ]
            for sys_, ss in samples.items()
        },
    }


def table(rows: list[dict[str, Any]]) -> str:
    out = [
        (
            "| workload | stages | plain Celery (s) | Chordflow (s) | ratio | plain ms/stage | Chordflow ms/stage "
            "| Chordflow makespan (s) | Redis cmds/stage plain / Chordflow "
            "| worker CPU ms/stage plain / Chordflow |"
        ),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        mk = "" if r["chordflow_makespan_s"] is None else f"{r['chordflow_makespan_s']:.3f}"
        calls = r["redis_calls_per_stage"]
        out.append(
            f"| {r['workload']} | {r['stages']} | {r['plain_s']:.3f} | {r['chordflow_s']:.3f} | "
            f"{r['ratio']:.2f}x | {r['plain_ms_per_stage']:.2f} | {r['chordflow_ms_per_stage']:.2f} | "
            f"{mk} | {calls['plain']:.1f} / {calls['chordflow']:.1f} | "
            f"{r['cpu_ms_per_stage']['plain']['worker']:.2f} / {r['cpu_ms_per_stage']['chordflow']['worker']:.2f} |"
        )
    return "\n".join(out)


def verdicts(rows: list[dict[str, Any]]) -> list[str]:
    lines = []
    for r in rows:
        ok = "meets" if r["ratio"] <= TARGET_RATIO else "MISSES"
        aim = "within" if r["ratio"] <= AIM_RATIO else "over"
        lines.append(
            f"- {r['workload']}: {r['ratio']:.2f}x plain Celery: {ok} the {TARGET_RATIO}x target, "
            f"{aim} the {AIM_RATIO}x aim"
        )
        if r["workload"] == "chain800":
            lines.append(
                f"- chain800: Chordflow {'IS' if r['ratio'] < 1 else 'is NOT'} faster than plain Celery"
            )
    return lines


def profile_with_py_spy(
    bench: Bench, worker: WorkerProcess, chosen: list[Workload], outdir: Path, fmt: str = "flamegraph"
) -> list[str]:
    """One more Chordflow run of each workload under `py-spy record` of the worker's process tree."""
    outdir.mkdir(parents=True, exist_ok=True)
    written = []
    for wl in chosen:
        bench.quiesce()
        out = outdir / f"worker-{wl.name}.{ {'flamegraph': 'svg', 'raw': 'txt'}.get(fmt, 'json') }"
        spy = subprocess.Popen(
            [
                "py-spy",
                "record",
                "--pid",
                str(_pid(worker)),
                "--subprocesses",
                "--rate",
                "250",
                "--nonblocking",
                "--format",
                fmt,
                "--output",
                str(out),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            time.sleep(1.0)
            wl.chordflow(bench)
        finally:
            spy.send_signal(signal.SIGINT)
            try:
                spy.wait(timeout=60)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait()
        written.append(str(out))
    return written


def _pid(worker: WorkerProcess) -> int:
    assert worker.proc is not None, "the worker was not started"
    return worker.proc.pid


def setup_info(
    args: argparse.Namespace, server: RedisServer, worker: WorkerProcess, log_path: str
) -> dict[str, Any]:
    r = redis.Redis.from_url(server.url, decode_responses=True)
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
        "redis_url": server.url,
        "worker_argv": worker.argv[1:],
        "worker_pid": _pid(worker),
        "pool": args.pool,
        "concurrency": args.concurrency,
        "repeat": args.repeat,
        "worker_log": log_path,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--repeat", type=int, default=3, help="timed runs of each system per workload (default 3)"
    )
    parser.add_argument("--quick", action="store_true", help="one repeat; for development")
    parser.add_argument(
        "--workloads",
        default="chain200,fanout2000,lattice100,chain800",
        help="comma-separated subset, in the order to run",
    )
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
        "--out", help="JSON output (default benchmarks/results/execution-<date>[-quick].json)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.repeat = 1
    everything = workloads()
    unknown = [w for w in args.workloads.split(",") if w not in everything]
    if unknown:
        parser.error(f"unknown workload(s) {', '.join(unknown)}; known: {', '.join(everything)}")
    chosen = [everything[w] for w in args.workloads.split(",")]

    # SIGTERM (and SIGHUP) unwind like Ctrl-C, so the finally below stops every process.
    def _raise(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, _raise)
    signal.signal(signal.SIGHUP, _raise)

    logdir = tempfile.mkdtemp(prefix="chordflow-bench-")
    log_path = os.path.join(logdir, "worker.log")
    server = RedisServer()
    worker: WorkerProcess | None = None
    try:
        server.start()
        env = {
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "CHORDFLOW_RESULT_BACKEND": server.url,
        }
        worker = WorkerProcess(
            server.url,
            queues=("cpu",),
            concurrency=args.concurrency,
            hostname="bench",
            imports=["benchmarks.plain_tasks"],
            env=env,
            log_path=log_path,
            pool=args.pool,
        )
        worker.start()
        bench = Bench(server.url, _pid(worker))
        wait_for_workers(bench.r, "chordflow", 1, timeout_s=60)
        info = setup_info(args, server, worker, log_path)
        print(
            f"setup: redis-server {info['redis_server']} at {server.url}; one worker "
            f"(pid {_pid(worker)}, {args.pool}, concurrency {args.concurrency}, queue cpu, "
            f"--import benchmarks.plain_tasks, result backend on the same Redis); {info['cpus']} CPUs, "
            f"load {info['load_avg_start'][0]:.2f}; Celery {celery.__version__}, Python {info['python']}; "
            f"{args.repeat} repeat(s); worker log {log_path}",
            flush=True,
        )

        for wl in warmups():
            measure(bench, wl, "plain")
            measure(bench, wl, "chordflow")

        rows = []
        for wl in chosen:
            samples: dict[str, list[Sample]] = {"plain": [], "chordflow": []}
            for rep in range(args.repeat):
                order = ("plain", "chordflow") if rep % 2 == 0 else ("chordflow", "plain")
                for system in order:
                    s = measure(bench, wl, system)
                    samples[system].append(s)
                    mk = "" if s.makespan_s is None else f", makespan {s.makespan_s:.3f}s"
                    print(
                        f"  {wl.name:<11} {system:<9} #{rep + 1}: {s.wall_s:.3f}s "
                        f"(submit {s.submit_s * 1000:.1f} ms{mk}, CPU s: client {s.extra['client_cpu_s']:.2f}, "
                        f"worker {s.extra['worker_cpu_s']:.2f}, redis {s.extra['redis_cpu_s']:.2f}; "
                        f"{sum(s.redis_calls.values())} Redis commands)",
                        flush=True,
                    )
            rows.append(summarize(wl, samples))

        info["load_avg_end"] = os.getloadavg()
        profiles = (
            profile_with_py_spy(bench, worker, chosen, Path(args.py_spy), args.py_spy_format)
            if args.py_spy
            else []
        )

        print()
        print(table(rows))
        print()
        print("\n".join(verdicts(rows)))
        day = dt.date.today().isoformat()
        out = (
            Path(args.out) if args.out else RESULTS / f"execution-{day}{'-quick' if args.quick else ''}.json"
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(
            json.dumps({"setup": info, "results": rows, "py_spy": profiles}, indent=2) + "\n",
            encoding="utf-8",
        )
        print(f"\nwrote {out}")
        return 0
    except BaseException:
        if os.path.exists(log_path):
            tail = Path(log_path).read_text(encoding="utf-8", errors="replace").splitlines()[-30:]
            print("worker log tail:\n" + "\n".join(tail), file=sys.stderr)
        raise
    finally:
        if worker is not None:
            worker.stop()
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
