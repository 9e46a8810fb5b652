"""What a gate costs a stage (engine/limits.py): a chain of no-op stages with no limits, in a pool, and
asking for memory (the worker's ledger), on one Redis and one worker; medians of `--repeat` runs.

    python benchmarks/bench_limits.py [--stages 200] [--repeat 3]

Redis commands and Redis CPU per stage come from INFO commandstats (reset before each run), so
they count every command the run caused: the client's submit and wait, the worker's scripts and
renewals, and the reaper's sweep.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orchestration.api import Client
from orchestration.fleet.embedded import RedisServer, WorkerProcess, wait_for_workers
from orchestration.language.validation import validate_data
from orchestration.settings import Settings

VARIANTS = {
    "no limits": {},
    "pool (size 4)": {"pool": "p"},
    "memory_gb: 4 (ledger)": {"resources": {"memory_gb": 4}},
}


def chain(stages: int, extra: dict) -> dict:
    return {
        "name": "bench-limits",
        "pools": {"p": 4},
        "stages": [
            {"id": f"s{i}", "uses": "noop", **({"needs": [f"s{i - 1}"]} if i else {}), **extra}
            for i in range(stages)
        ],
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--stages", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with RedisServer() as server:
        r = redis.Redis.from_url(server.url, decode_responses=True)
        worker = WorkerProcess(
            server.url, ("cpu", "highmem"), 2, hostname="bench", memory_gb=64, env={"PYTHONPATH": str(ROOT)}
        ).start()
        try:
            wait_for_workers(r, "chordflow", 1, 60)
            client = Client(Settings(redis_url=server.url))
            print(f"chain of {args.stages} no-op stages, one worker (prefork, 2), medians of {args.repeat}")
            print("| stages | ms/stage | Redis cmds/stage | Redis CPU ms/stage |")
            print("|---|---:|---:|---:|")
            for label, extra in VARIANTS.items():
                spec = validate_data(chain(args.stages, extra))
                client.submit(spec).wait(timeout=300)  # warm up
                times, cmds, cpu = [], [], []
                for _ in range(args.repeat):
                    r.config_resetstat()
                    started = time.perf_counter()
                    result = client.submit(spec).wait(timeout=300)
                    times.append(time.perf_counter() - started)
                    assert result.status == "succeeded", result
                    stats = r.info("commandstats").values()
                    cmds.append(sum(s["calls"] for s in stats) / args.stages)
                    cpu.append(sum(s["usec"] for s in stats) / args.stages / 1000)
                print(
                    f"| {label} | {statistics.median(times) / args.stages * 1000:.2f} | "
                    f"{statistics.median(cmds):.1f} | {statistics.median(cpu):.3f} |"
                )
        finally:
            worker.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
