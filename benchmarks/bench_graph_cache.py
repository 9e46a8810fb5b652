"""A worker's memory over many large runs: does it stop growing?

    python benchmarks/bench_graph_cache.py                   # 25 runs of a 2,000-stage chain
    python benchmarks/bench_graph_cache.py --runs 40 --stages 5000

A redis-server of its own and one Chordflow worker (prefork, concurrency 2); runs of a chain of
no-op stages one after the other; every 5 runs, the RSS of the worker's processes (main, then the
pool's). Each process keeps the graphs of the runs it served in a cache bounded in nodes
(`CHORDFLOW_GRAPH_CACHE_NODES`, 20,000; orchestration/engine/runs.py): once the runs it served pass that many stages
its memory stops growing. (Before it was bounded at 256 graphs of any size, and a worker's three
processes grew by 7.8 MiB for each 2,000-stage run: benchmarks/README.md, session 29.)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_execution import chain_spec
from benchmarks.profile_scripts import one_worker


def rss_mib(pid: int) -> list[float]:
    """RSS of the worker's main process, then of each of its children, MiB."""
    main = psutil.Process(pid)
    return [round(p.memory_info().rss / 2**20, 1) for p in (main, *main.children(recursive=True))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=25)
    parser.add_argument("--stages", type=int, default=2000, help="stages of each run's chain")
    args = parser.parse_args()
    spec = chain_spec(args.stages)
    with one_worker("graph-cache") as (_, client, worker):
        shown = rss_mib(worker.proc.pid)
        print(f"{'runs':>5} {'stages':>8} {'RSS MiB (all)':>14}  main, pool processes")
        print(f"{0:>5} {0:>8} {sum(shown):>14.1f}  {shown}")
        for done in range(1, args.runs + 1):
            client.submit(spec).wait(timeout=600)
            if done % 5 == 0 or done == args.runs:
                shown = rss_mib(worker.proc.pid)
                print(f"{done:>5} {done * args.stages:>8} {sum(shown):>14.1f}  {shown}", flush=True)


if __name__ == "__main__":
    main()
