"""The fleet ceiling: as many workers as the machine holds on one Redis, no-op stages, Chordflow
against plain Celery in one run. How many stages a second one Redis core would carry.

    python benchmarks/bench_fleet.py [--workers 3] [--concurrency 2] [--pool prefork]
                                     [--workloads fanout,chains] [--items 10000]
                                     [--chains 200] [--length 25] [--runs 100] [--run-length 10]
                                     [--rounds 2] [--repeat 2] [--quick] [--out FILE]

One redis-server (the benchmark's own, on a free port, no persistence). Each system gets a fleet
of `--workers` worker processes of `--concurrency` pool processes each, on that Redis, one system
at a time: the fleet starts, runs one small warm-up of each workload, then `--repeat` samples of
each, and stops; the Redis is flushed between fleets. `--rounds` rounds, the order of the two
systems reversed each round.

- **Chordflow**: `python -m orchestration worker --queues cpu --concurrency C` per worker, no-op
  stages (`uses: noop`).
- **plain Celery**: `python -m celery -A benchmarks.plain_app worker --concurrency C` per worker,
  with Celery's defaults (prefetch multiplier 4, early ack, no task events, results stored),
  `plain.noop` / `plain.noop_result` / `plain.push` tasks.

Workloads:

| name | Chordflow | plain Celery |
|---|---|---|
| `fanout` | a stage whose output is `list(range(items))`, then a `noop` stage with `for_each` over it | `chord(group(items x noop_result.si(i)), push.si(key))` |
| `chains` | one run of `chains` independent chains of `length` `noop` stages | `chains` canvases `chain(length x noop.si(), push.si(key))`, all sent at once |
| `runs` (not by default) | `runs` runs, each a chain of `run-length` `noop` stages, submitted at once | the same as `chains` with `runs` chains of `run-length` |

A sample is timed from just before the first submit / `apply_async` to the moment the client
learns the end (Chordflow: `client.follow` of every run returned; plain: the BLPOP of every
chain's push, or the chord's). Over the same window, from INFO: Redis CPU (used_cpu_sys +
used_cpu_user), Redis commands (INFO commandstats: every command, those run by Lua scripts
included); and the CPU of every worker process (psutil).

Reported per system and workload (medians of the samples): stages/s; Redis CPU % (Redis CPU
seconds / wall seconds: the share of one core Redis used); Redis commands per stage; and the
**ceiling of one Redis core**: stages/s / Redis CPU fraction = stages / Redis CPU seconds, what
one Redis core would carry if Redis's CPU per stage stayed what it is here and the workers
were not the limit. The issue's goal is a Chordflow ceiling of at least 8,000 stages/s.

On a small machine the workers and Redis share the cores, so Redis's CPU per stage is measured
under contention. The load average is printed before each fleet starts (the machine without this
benchmark's workers) and after every sample (with them: a busy fleet alone makes it several).
What an idle fleet costs Redis (queue polling, heartbeats, Chordflow's reaper) is measured for 3 s
after the warm-up and printed; it is inside every sample's window too.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import celery
import psutil
import redis
from celery import chain, chord, group

from benchmarks.bench_execution import (
    RESULTS,
    BenchRedis,
    ChordflowWorker,
    PlainWorker,
    _delta,
    _handle_signals,
    fanout_spec,
)
from benchmarks.plain_app import make_app
from orchestration.api import Client
from orchestration.errors import LocalFleetError
from orchestration.fleet.embedded import WorkerProcess, wait_for_workers
from orchestration.language.spec import PipelineSpec
from orchestration.language.validation import validate_data
from orchestration.settings import Settings

FLOW, PLAIN = "chordflow", "plain"
LABEL = {FLOW: "Chordflow", PLAIN: "plain Celery (defaults)"}
GOAL_CEILING = 8000.0  # stages/s of one Redis core (issue 22)
TIMEOUT_S = 900.0


# -- the fleets -----------------------------------------------------------------------------------
class Fleet:
    """`workers` worker processes of one system on the benchmark's Redis; `stop()` ends them all."""

    def __init__(self, system: str, url: str, workers: int, concurrency: int, pool: str, logdir: str):
        self.system, self.url = system, url
        pythonpath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        self.hostnames = [
            f"{system}-{i + 1}@fleet" if system == PLAIN else f"fleet-{i + 1}" for i in range(workers)
        ]
        self.logs = [os.path.join(logdir, f"worker-{system}-{i + 1}.log") for i in range(workers)]
        self.workers: list[WorkerProcess] = []
        for hostname, log in zip(self.hostnames, self.logs, strict=True):
            if system == FLOW:
                self.workers.append(
                    ChordflowWorker(
                        url,
                        queues=("cpu",),
                        concurrency=concurrency,
                        hostname=hostname,
                        env={"PYTHONPATH": pythonpath},
                        log_path=log,
                        pool=pool,
                    )
                )
            else:
                self.workers.append(
                    PlainWorker(url, concurrency, pool, log, {"PYTHONPATH": pythonpath}, hostname=hostname)
                )

    def start(self, timeout_s: float = 120.0) -> Fleet:
        for worker in self.workers:
            worker.start()
        r = redis.Redis.from_url(self.url)
        if self.system == FLOW:
            wait_for_workers(r, "chordflow", len(self.workers), timeout_s=timeout_s, hostnames=self.hostnames)
            return self
        app = make_app(self.url)
        deadline = time.monotonic() + timeout_s
        try:
            while len(app.control.ping(destination=self.hostnames, timeout=1.0)) < len(self.hostnames):
                dead = [w for w in self.workers if w.proc is not None and w.proc.poll() is not None]
                if dead or time.monotonic() > deadline:
                    raise LocalFleetError(f"the plain Celery fleet did not answer pings; logs {self.logs}")
        finally:
            app.close()
        return self

    def processes(self) -> list[psutil.Process]:
        procs = []
        for worker in self.workers:
            if worker.proc is None:
                continue
            with contextlib.suppress(psutil.NoSuchProcess):
                main = psutil.Process(worker.proc.pid)
                procs += [main, *main.children(recursive=True)]
        return procs

    def cpu_s(self) -> float:
        total = 0.0
        for proc in self.processes():
            with contextlib.suppress(psutil.NoSuchProcess):
                t = proc.cpu_times()
                total += t.user + t.system
        return total

    def stop(self) -> None:
        for worker in self.workers:
            with contextlib.suppress(Exception):
                worker.stop()

    def log_tails(self, lines: int = 20) -> str:
        out = []
        for path in self.logs:
            if os.path.exists(path):
                tail = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
                out.append(f"--- {path}:\n" + "\n".join(tail))
        return "\n".join(out)


# -- samples --------------------------------------------------------------------------------------
@dataclass
class Sample:
    system: str
    workload: str
    stages: int
    wall_s: float
    redis_cpu_s: float
    workers_cpu_s: float
    client_cpu_s: float
    load_avg: tuple[float, float, float]
    redis_calls: dict[str, int] = field(default_factory=dict)

    @property
    def stages_per_s(self) -> float:
        return self.stages / self.wall_s

    @property
    def redis_cpu_pct(self) -> float:
        return 100.0 * self.redis_cpu_s / self.wall_s

    @property
    def cmds_per_stage(self) -> float:
        return sum(self.redis_calls.values()) / self.stages

    @property
    def ceiling(self) -> float:
        """Stages per second of one Redis core: stages/s / Redis CPU fraction."""
        return self.stages / self.redis_cpu_s if self.redis_cpu_s > 0 else float("inf")

    def as_dict(self) -> dict[str, Any]:
        return {
            "system": self.system,
            "workload": self.workload,
            "stages": self.stages,
            "wall_s": round(self.wall_s, 4),
            "stages_per_s": round(self.stages_per_s, 1),
            "redis_cpu_s": round(self.redis_cpu_s, 4),
            "redis_cpu_pct": round(self.redis_cpu_pct, 1),
            "redis_cmds_per_stage": round(self.cmds_per_stage, 2),
            "ceiling_stages_per_s": round(self.ceiling, 0),
            "workers_cpu_s": round(self.workers_cpu_s, 3),
            "client_cpu_s": round(self.client_cpu_s, 3),
            "load_avg": self.load_avg,
            "redis_calls": self.redis_calls,
        }


class Bench:
    """The client of both systems and the raw Redis client the measurements read."""

    def __init__(self, url: str):
        self.url = url
        self.r = redis.Redis.from_url(url, decode_responses=True, socket_timeout=TIMEOUT_S + 30)
        self.client = Client(Settings(redis_url=url))
        self.plain = make_app(url)

    def snapshot(self, fleet: Fleet) -> dict[str, Any]:
        info = self.r.info("all")
        return {
            "calls": {
                k.removeprefix("cmdstat_"): int(v["calls"])
                for k, v in info.items()
                if k.startswith("cmdstat_")
            },
            "redis_cpu": float(info["used_cpu_user"]) + float(info["used_cpu_sys"]),
            "workers_cpu": fleet.cpu_s(),
            "client_cpu": time.process_time(),
        }

    def quiesce(self, timeout_s: float = 60.0) -> None:
        """Wait until both broker queues are empty and nothing is unacked, then a short pause."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.r.llen("cpu") == 0 and self.r.llen("celery") == 0 and self.r.zcard("unacked_index") == 0:
                break
            time.sleep(0.05)
        time.sleep(0.3)

    def blpop(self, key: str) -> None:
        if self.r.blpop([key], timeout=TIMEOUT_S) is None:
            raise TimeoutError(f"no signal on {key} within {TIMEOUT_S:.0f}s")

    def sig(self, name: str, *args: Any) -> celery.Signature:
        return self.plain.signature(f"plain.{name}", args=args, immutable=True)


Runner = Callable[[Bench], None]  # runs one sample: from the first submit to the end learned


@dataclass
class Workload:
    name: str
    stages: int
    runners: dict[str, Runner]


def chains_spec(chains: int, length: int, name: str = "fleet-chains") -> PipelineSpec:
    """`chains` independent chains of `length` no-op stages, in one pipeline."""
    stages = []
    for c in range(chains):
        for i in range(length):
            stage: dict[str, Any] = {"id": f"c{c:04d}_{i:03d}", "uses": "noop"}
            if i:
                stage["needs"] = [f"c{c:04d}_{i - 1:03d}"]
            stages.append(stage)
    return validate_data({"name": name, "stages": stages})


def flow_runs(specs: list[PipelineSpec]) -> Runner:
    def run(bench: Bench) -> None:
        handles = [bench.client.submit(spec) for spec in specs]
        for handle in handles:
            status = bench.client.follow(handle.run_id, timeout_s=TIMEOUT_S)
            if status != "succeeded":
                raise RuntimeError(f"Chordflow run {handle.run_id} ended {status}")

    return run


def plain_fanout(items: int) -> Runner:
    def run(bench: Bench) -> None:
        key = f"fleet:chord:{time.time_ns()}"
        chord(group(bench.sig("noop_result", i) for i in range(items)), bench.sig("push", key)).apply_async()
        bench.blpop(key)

    return run


def plain_chains(chains: int, length: int) -> Runner:
    def run(bench: Bench) -> None:
        key = f"fleet:chains:{time.time_ns()}"
        canvases = [
            chain(*[bench.sig("noop") for _ in range(length)], bench.sig("push", key)) for _ in range(chains)
        ]
        with bench.plain.producer_or_acquire() as producer:
            for canvas in canvases:
                canvas.apply_async(producer=producer)
        for _ in range(chains):
            bench.blpop(key)

    return run


def workloads(args: argparse.Namespace, scale: float = 1.0) -> dict[str, Workload]:
    """The workloads at `scale` of their size (the warm-up runs them small)."""

    def n(value: int) -> int:
        return max(1, int(value * scale))

    items, chains, length, runs, run_length = (
        n(args.items),
        n(args.chains),
        args.length,
        n(args.runs),
        args.run_length,
    )
    return {
        "fanout": Workload(
            "fanout",
            items,  # the items; the stage that makes the list is one more stage, not counted
            {FLOW: flow_runs([fanout_spec(items)]), PLAIN: plain_fanout(items)},
        ),
        "chains": Workload(
            "chains",
            chains * length,
            {FLOW: flow_runs([chains_spec(chains, length)]), PLAIN: plain_chains(chains, length)},
        ),
        "runs": Workload(
            "runs",
            runs * run_length,
            {
                FLOW: flow_runs([chains_spec(1, run_length, f"fleet-run-{i}") for i in range(runs)]),
                PLAIN: plain_chains(runs, run_length),
            },
        ),
    }


def measure(bench: Bench, fleet: Fleet, wl: Workload) -> Sample:
    bench.quiesce()
    start = bench.snapshot(fleet)
    t0 = time.perf_counter()
    wl.runners[fleet.system](bench)
    wall = time.perf_counter() - t0
    end = bench.snapshot(fleet)
    return Sample(
        fleet.system,
        wl.name,
        wl.stages,
        wall,
        end["redis_cpu"] - start["redis_cpu"],
        end["workers_cpu"] - start["workers_cpu"],
        end["client_cpu"] - start["client_cpu"],
        os.getloadavg(),
        _delta(start["calls"], end["calls"]),
    )


def sample_line(s: Sample) -> str:
    return (
        f"  {LABEL[s.system]:<24} {s.workload:<7} {s.stages:>6} stages in {s.wall_s:6.2f} s: "
        f"{s.stages_per_s:7.0f} stages/s; Redis CPU {s.redis_cpu_pct:5.1f}%, {s.cmds_per_stage:5.1f} cmds/stage, "
        f"ceiling {s.ceiling:7.0f} stages/s; workers CPU {s.workers_cpu_s:6.2f} s; "
        f"load {s.load_avg[0]:.2f}"
    )


@contextlib.contextmanager
def running(fleet: Fleet) -> Iterator[Fleet]:
    try:
        fleet.start()
        yield fleet
    except BaseException:
        print(fleet.log_tails(), file=sys.stderr)
        raise
    finally:
        fleet.stop()


def idle(bench: Bench, fleet: Fleet, seconds: float = 3.0) -> dict[str, float]:
    """What the fleet costs Redis while it has no work (queue polling, heartbeats, the reaper): it
    is inside every sample's window too."""
    bench.quiesce()
    start = bench.snapshot(fleet)
    time.sleep(seconds)
    end = bench.snapshot(fleet)
    calls = _delta(start["calls"], end["calls"])
    return {
        "redis_cpu_pct": round(100 * (end["redis_cpu"] - start["redis_cpu"]) / seconds, 2),
        "redis_cmds_per_s": round(sum(calls.values()) / seconds, 1),
        "workers_cpu_pct": round(100 * (end["workers_cpu"] - start["workers_cpu"]) / seconds, 2),
    }


def run_system(
    bench: Bench, system: str, args: argparse.Namespace, chosen: list[str], logdir: str
) -> tuple[list[Sample], dict[str, float]]:
    bench.r.flushall()
    fleet = Fleet(system, bench.url, args.workers, args.concurrency, args.pool, logdir)
    samples = []
    with running(fleet):
        small = workloads(args, scale=0.05)
        for name in chosen:  # warm-up: every pool process imports and connects
            wl = small[name]
            wl.runners[system](bench)
        background = idle(bench, fleet)
        print(
            f"  idle fleet: Redis CPU {background['redis_cpu_pct']:.2f}%, {background['redis_cmds_per_s']:.0f} "
            f"commands/s; workers CPU {background['workers_cpu_pct']:.1f}%",
            flush=True,
        )
        full = workloads(args)
        for _ in range(args.repeat):
            for name in chosen:
                s = measure(bench, fleet, full[name])
                samples.append(s)
                print(sample_line(s), flush=True)
    return samples, background


# -- the summary ----------------------------------------------------------------------------------
def summarize(samples: list[Sample], chosen: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in chosen:
        row: dict[str, Any] = {}
        for system in (FLOW, PLAIN):
            ss = [s for s in samples if s.system == system and s.workload == name]
            if not ss:
                continue
            calls = sorted({c for s in ss for c in s.redis_calls})
            row[system] = {
                "samples": len(ss),
                "stages": ss[0].stages,
                "wall_s": round(statistics.median(s.wall_s for s in ss), 4),
                "stages_per_s": round(statistics.median(s.stages_per_s for s in ss), 1),
                "redis_cpu_pct": round(statistics.median(s.redis_cpu_pct for s in ss), 1),
                "redis_cmds_per_stage": round(statistics.median(s.cmds_per_stage for s in ss), 2),
                "ceiling_stages_per_s": round(statistics.median(s.ceiling for s in ss), 0),
                "workers_cpu_ms_per_stage": round(
                    statistics.median(1000 * s.workers_cpu_s / s.stages for s in ss), 3
                ),
                "redis_cmds_per_stage_by_name": {
                    c: round(statistics.median(s.redis_calls.get(c, 0) for s in ss) / ss[0].stages, 2)
                    for c in calls
                },
            }
        if FLOW in row and PLAIN in row:
            f, p = row[FLOW], row[PLAIN]
            row["ratio"] = {
                "stages_per_s": round(f["stages_per_s"] / p["stages_per_s"], 3),
                "ceiling": round(f["ceiling_stages_per_s"] / p["ceiling_stages_per_s"], 3),
                "redis_cmds_per_stage": round(f["redis_cmds_per_stage"] / p["redis_cmds_per_stage"], 3),
            }
        if FLOW in row:
            row["goal"] = {
                "ceiling_at_least": GOAL_CEILING,
                "met": row[FLOW]["ceiling_stages_per_s"] >= GOAL_CEILING,
            }
        out[name] = row
    return out


def table(summary: dict[str, Any]) -> str:
    lines = [
        "| workload | system | stages | stages/s | Redis CPU % | Redis cmds/stage | ceiling of one Redis core (stages/s) | workers CPU ms/stage |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in summary.items():
        for system in (FLOW, PLAIN):
            if system not in row:
                continue
            r = row[system]
            lines.append(
                f"| {name} | {LABEL[system]} | {r['stages']} | {r['stages_per_s']:.0f} | {r['redis_cpu_pct']:.1f} "
                f"| {r['redis_cmds_per_stage']:.1f} | {r['ceiling_stages_per_s']:.0f} | {r['workers_cpu_ms_per_stage']:.2f} |"
            )
        if "ratio" in row:
            ratio = row["ratio"]
            lines.append(
                f"| {name} | Chordflow / plain | | {ratio['stages_per_s']:.2f}x | | "
                f"{ratio['redis_cmds_per_stage']:.2f}x | {ratio['ceiling']:.2f}x | |"
            )
    return "\n".join(lines)


def goal_lines(summary: dict[str, Any]) -> list[str]:
    out = []
    for name, row in summary.items():
        if "goal" in row:
            ceiling = row[FLOW]["ceiling_stages_per_s"]
            verdict = "met" if row["goal"]["met"] else "NOT MET"
            out.append(
                f"goal: {name}: Chordflow's ceiling {ceiling:.0f} stages/s >= {GOAL_CEILING:.0f}: {verdict}"
            )
    return out


def top_commands(summary: dict[str, Any], n: int = 8) -> str:
    lines = []
    for name, row in summary.items():
        for system in (FLOW, PLAIN):
            if system in row:
                by_name = sorted(row[system]["redis_cmds_per_stage_by_name"].items(), key=lambda kv: -kv[1])[
                    :n
                ]
                lines.append(
                    f"  {name:<7} {LABEL[system]:<24} " + ", ".join(f"{c} {v:g}" for c, v in by_name)
                )
    return "\n".join(lines)


# -- main -----------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=3, help="worker processes per system (default 3)")
    parser.add_argument("--concurrency", type=int, default=2, help="pool processes per worker (default 2)")
    parser.add_argument("--pool", default="prefork", choices=["prefork", "threads", "solo"])
    parser.add_argument("--workloads", default="fanout,chains", help="comma-separated: fanout, chains, runs")
    parser.add_argument("--items", type=int, default=10_000, help="items of the fan-out (default 10,000)")
    parser.add_argument("--chains", type=int, default=200, help="chains of the chains workload (default 200)")
    parser.add_argument("--length", type=int, default=25, help="stages of each chain (default 25)")
    parser.add_argument("--runs", type=int, default=100, help="runs of the runs workload (default 100)")
    parser.add_argument("--run-length", type=int, default=10, help="stages of each run's chain (default 10)")
    parser.add_argument(
        "--rounds", type=int, default=2, help="fleet starts per system, order reversed each round"
    )
    parser.add_argument(
        "--repeat", type=int, default=2, help="samples of each workload per round (default 2)"
    )
    parser.add_argument("--quick", action="store_true", help="one round, one sample, a tenth of the sizes")
    parser.add_argument("--out", help="JSON output (default benchmarks/results/fleet-<date>[-quick].json)")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.repeat = 1, 1
        args.items, args.chains, args.runs = args.items // 10, args.chains // 10, args.runs // 10
    chosen = [w for w in args.workloads.split(",") if w]
    known = workloads(args, scale=0.0)
    if unknown := [w for w in chosen if w not in known]:
        parser.error(f"unknown workload(s) {', '.join(unknown)}; known: {', '.join(known)}")
    _handle_signals()

    logdir = tempfile.mkdtemp(prefix="chordflow-fleet-")
    load_start = os.getloadavg()
    server = BenchRedis()
    samples: list[Sample] = []
    backgrounds: dict[str, list[dict[str, float]]] = {FLOW: [], PLAIN: []}
    try:
        server.start()
        bench = Bench(server.url)
        version = bench.r.info("server")["redis_version"]
        print(
            f"setup: redis-server {version} at {server.url}; {args.workers} workers x concurrency "
            f"{args.concurrency} ({args.pool}) per system; {os.cpu_count()} CPUs, load "
            f"{load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f}; Celery {celery.__version__}, "
            f"Python {platform.python_version()}; {args.rounds} round(s) of {args.repeat} sample(s); "
            f"worker logs in {logdir}",
            flush=True,
        )
        for rnd in range(args.rounds):
            order = [FLOW, PLAIN] if rnd % 2 == 0 else [PLAIN, FLOW]
            for system in order:
                load = os.getloadavg()
                print(
                    f"round {rnd + 1}, {LABEL[system]} (load before its fleet starts {load[0]:.2f}):",
                    flush=True,
                )
                got, background = run_system(bench, system, args, chosen, logdir)
                samples += got
                backgrounds[system].append(background)
    finally:
        server.stop()
    load_end = os.getloadavg()

    summary = summarize(samples, chosen)
    print()
    print(table(summary))
    print("\nRedis commands per stage, by name (top 8; medians):")
    print(top_commands(summary))
    print()
    for line in goal_lines(summary):
        print(line)
    print(f"load average at start {load_start[0]:.2f}, at end {load_end[0]:.2f}")

    suffix = "-quick" if args.quick else ""
    out = Path(args.out) if args.out else RESULTS / f"fleet-{dt.date.today().isoformat()}{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "setup": {
                    "date": dt.datetime.now().isoformat(timespec="seconds"),
                    "host": platform.node(),
                    "cpus": os.cpu_count(),
                    "load_avg_start": load_start,
                    "load_avg_end": load_end,
                    "python": platform.python_version(),
                    "celery": celery.__version__,
                    "redis_py": redis.__version__,
                    "redis_server": version,
                    "argv": sys.argv[1:] if argv is None else argv,
                    **{k: v for k, v in vars(args).items() if k != "out"},
                    "logs": logdir,
                },
                "summary": summary,
                "idle_fleet": backgrounds,
                "samples": [s.as_dict() for s in samples],
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
