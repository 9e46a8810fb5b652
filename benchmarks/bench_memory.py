"""Worker memory, Chordflow against plain Celery: RSS per process and the modules each imports.

    python benchmarks/bench_memory.py [--concurrency 2] [--pool prefork] [--workloads chain800,...] [--out FILE]

Two measurements, in one run:

1. **Imports, in fresh interpreters** (one per system, nothing else running in them): what the
   worker's main process imports before Celery's worker starts. Chordflow: the `chordflow worker`
   command's modules (`orchestration.cli.main`, `workers.cli`, which imports `workers.main` and
   `workers.app`); plain Celery: `benchmarks.plain_app`. Both then import the same Celery worker
   modules (consumer, prefork pool, Redis transport and result backend). Reported: modules in
   `sys.modules`, RSS, and the modules Chordflow has beyond plain Celery, by top-level package.
2. **Running workers** (`bench_execution.py`'s Fleet: one redis-server, Chordflow's worker and
   plain Celery's own worker, prefork, concurrency 2), after `bench_execution.py`'s warm-up
   workloads ran on both (and then, with `--workloads`, those of its workloads, once on each
   system): RSS, USS and PSS of every process of each worker, and the modules each pool process
   has imported (a task, `bench.modules` / `plain.modules`, returns them).

It prints the load average at start and end, and writes JSON to
benchmarks/results/memory-<date>.json.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psutil

from benchmarks.bench_execution import (
    DEFAULT,
    RESULTS,
    SAME,
    Bench,
    _handle_signals,
    run_workload,
    running_fleet,
    warmups,
    workloads,
)

#: What a Celery worker's main process imports to serve a Redis broker, for both systems.
CELERY_WORKER = (
    "celery.apps.worker",
    "celery.worker.consumer",
    "celery.concurrency.prefork",
    "kombu.transport.redis",
    "celery.backends.redis",
)
ENTRY = {
    "chordflow": ("orchestration.cli.main", "workers.cli"),
    "plain": ("benchmarks.plain_app",),
}
PROBE = """
import importlib, json, sys, psutil
for name in sys.argv[1:]:
    importlib.import_module(name)
print(json.dumps({"rss": psutil.Process().memory_info().rss, "modules": sorted(sys.modules)}))
"""


def fresh_imports() -> dict[str, Any]:
    """Each system's main-process imports, in a fresh interpreter of its own."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "BENCH_PLAIN_REDIS_URL": "redis://127.0.0.1:1/0"}
    out: dict[str, Any] = {}
    for system, entry in ENTRY.items():
        done = subprocess.run(
            [sys.executable, "-c", PROBE, *entry, *CELERY_WORKER],
            env=env,
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        )
        out[system] = json.loads(done.stdout)
    extra = sorted(set(out["chordflow"]["modules"]) - set(out["plain"]["modules"]))
    by_package = collections.Counter(name.split(".")[0] for name in extra)
    return {system: {"rss": got["rss"], "count": len(got["modules"])} for system, got in out.items()} | {
        "extra": extra,
        "extra_by_package": dict(by_package.most_common()),
    }


def processes(bench: Bench, worker: str) -> list[dict[str, Any]]:
    """RSS, USS and PSS (bytes) of each process of a worker, the main process first."""
    rows = []
    for i, proc in enumerate(bench.tree(worker)):
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            mem = proc.memory_full_info()
            rows.append(
                {
                    "pid": proc.pid,
                    "role": "main" if i == 0 else "pool",
                    "rss": mem.rss,
                    "uss": mem.uss,
                    "pss": mem.pss,
                }
            )
    return rows


def pool_modules(bench: Bench, system: str, concurrency: int, tries: int = 40) -> dict[int, list[str]]:
    """pid -> modules imported, for each pool process that answered `tries` tasks sent at once."""
    name = "bench.modules" if system == SAME else "plain.modules"
    results = [bench.apps[system].signature(name).apply_async() for _ in range(tries)]
    counts: dict[int, list[str]] = {}
    for result in results:
        got = result.get(timeout=60)
        counts[int(got["pid"])] = got["modules"]
        result.forget()
    if len(counts) < concurrency:
        print(f"  ({system}: only {len(counts)} of {concurrency} pool processes answered)", flush=True)
    return counts


def mib(n: float) -> str:
    return f"{n / 2**20:.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--pool", default="prefork", choices=["prefork", "threads", "solo"])
    parser.add_argument(
        "--workloads", default="", help="bench_execution.py workloads to run once on each system first"
    )
    parser.add_argument("--out", help="JSON output (default benchmarks/results/memory-<date>.json)")
    args = parser.parse_args(argv)
    known = workloads()
    names = [name for name in args.workloads.split(",") if name]
    if unknown := [name for name in names if name not in known]:
        parser.error(f"unknown workload(s) {', '.join(unknown)}; known: {', '.join(known)}")
    chosen = [known[name] for name in names]
    _handle_signals()
    load_start = os.getloadavg()
    print(f"load average {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f}; {os.cpu_count()} CPUs")

    imports = fresh_imports()
    c, p = imports["chordflow"], imports["plain"]
    print(
        f"imports (fresh interpreter, main process before the worker starts): Chordflow {c['count']} modules, "
        f"{mib(c['rss'])} MiB RSS; plain Celery {p['count']} modules, {mib(p['rss'])} MiB RSS"
    )
    print(
        f"  Chordflow's {len(imports['extra'])} more, by package: "
        + ", ".join(f"{k} {v}" for k, v in imports["extra_by_package"].items())
    )

    with running_fleet(args.concurrency, args.pool) as fleet:
        bench = Bench(fleet.server.url, fleet.pids())
        for wl in [*warmups(), *chosen]:
            run_workload(bench, wl, 1, quiet=True)
        time.sleep(1.0)  # the services' first ticks, the pool processes' first stages: settled
        running: dict[str, Any] = {}
        names: dict[str, set[str]] = {}
        for worker, system in (("chordflow", SAME), ("plain", DEFAULT)):
            modules = pool_modules(bench, system, args.concurrency)
            names[worker] = set().union(*modules.values())
            rows = processes(bench, worker)
            for row in rows:
                row["modules"] = len(modules[row["pid"]]) if row["pid"] in modules else None
            running[worker] = {
                "processes": rows,
                "rss": sum(r["rss"] for r in rows),
                "uss": sum(r["uss"] for r in rows),
                "pss": sum(r["pss"] for r in rows),
            }
    load_end = os.getloadavg()
    pool_extra = sorted(names["chordflow"] - names["plain"])

    after = ", ".join(["the warm-up", *(wl.name for wl in chosen)])
    print(f"\nrunning workers, after {after} (MiB; modules: a pool process's sys.modules):")
    print("| worker | process | RSS | USS | PSS | modules |")
    print("|---|---|---:|---:|---:|---:|")
    for worker, got in running.items():
        for row in got["processes"]:
            count = "-" if row["modules"] is None else str(row["modules"])
            print(
                f"| {worker} | {row['role']} {row['pid']} | {mib(row['rss'])} | {mib(row['uss'])} "
                f"| {mib(row['pss'])} | {count} |"
            )
        print(f"| {worker} | **total** | {mib(got['rss'])} | {mib(got['uss'])} | {mib(got['pss'])} | |")
    by_package = collections.Counter(name.split(".")[0] for name in pool_extra).most_common()
    print(
        f"  a Chordflow pool process's {len(pool_extra)} modules beyond plain Celery's, by package: "
        + ", ".join(f"{k} {v}" for k, v in by_package)
    )
    ratio = running["chordflow"]["rss"] / running["plain"]["rss"]
    uss_ratio = running["chordflow"]["uss"] / running["plain"]["uss"]
    print(
        f"\nRSS Chordflow / plain Celery: {ratio:.2f}x (USS {uss_ratio:.2f}x); load average at end {load_end[0]:.2f}"
    )

    out = Path(args.out) if args.out else RESULTS / f"memory-{dt.date.today().isoformat()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "date": dt.datetime.now().isoformat(timespec="seconds"),
                "cpus": os.cpu_count(),
                "load_avg_start": load_start,
                "load_avg_end": load_end,
                "concurrency": args.concurrency,
                "pool": args.pool,
                "workloads": [wl.name for wl in chosen],
                "imports": imports,
                "running": running,
                "pool_extra": pool_extra,
                "rss_ratio": round(ratio, 3),
                "uss_ratio": round(uss_ratio, 3),
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
