"""Where Redis's time goes for one run, script by script: SLOWLOG with a threshold of 0.

    python benchmarks/profile_scripts.py                 # a chain of 200 no-op stages
    python benchmarks/profile_scripts.py --stages 800
    python benchmarks/profile_scripts.py --workload skewed     # bench_execution's skewed DAG
    python benchmarks/profile_scripts.py --workload lattice100

A redis-server of its own and one Chordflow worker (prefork, concurrency 2); a small warm-up run,
then SLOWLOG records every command of one chain's run. Each EVALSHA is named by its script (the
SHA1 of `engine/scripts.source`). Redis counts a script's inner calls in their own rows too: an
EVALSHA's time includes them, and Redis's own cost of each call from Lua (its arguments, the
lookup, the reply), which no row shows.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import hashlib
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orchestration.api import Client
from orchestration.engine.scripts import source
from orchestration.fleet.embedded import RedisServer, WorkerProcess, wait_for_workers
from orchestration.language.spec import PipelineSpec
from orchestration.language.validation import validate_data
from orchestration.settings import Settings

SCRIPTS = (
    "begin.lua",
    "finish.lua",
    "retry.lua",
    "renew.lua",
    "claim.lua",
    "fanout.lua",
    "sweep.lua",
    "record_end.lua",
)


def script_names() -> dict[str, str]:
    """SHA1 -> script name, for every variant a worker may load."""
    names = {}
    for name in SCRIPTS:
        for allow_oom in (False, True):
            for limits in (False, True):
                names[hashlib.sha1(source(name, allow_oom, limits).encode()).hexdigest()] = name
    return names


def chain(name: str, length: int) -> dict:
    stages = [{"id": "s0", "uses": "noop"}]
    stages += [{"id": f"s{i}", "uses": "noop", "needs": [f"s{i - 1}"]} for i in range(1, length)]
    return {"name": name, "stages": stages}


@contextlib.contextmanager
def one_worker(name: str) -> Iterator[tuple[redis.Redis, Client, WorkerProcess]]:
    """A redis-server of its own and one Chordflow worker on it (queue cpu, prefork, concurrency
    2), ready: (a client of that Redis, a Chordflow client, the worker)."""
    log = Path(tempfile.mkdtemp(prefix=f"chordflow-{name}-")) / "worker.log"
    with RedisServer() as server:
        r = redis.Redis.from_url(server.url, decode_responses=True)
        worker = WorkerProcess(server.url, ("cpu",), 2, hostname=name, log_path=str(log)).start()
        try:
            wait_for_workers(r, "chordflow", 1, timeout_s=60)
            yield r, Client(Settings(redis_url=server.url)), worker
        finally:
            worker.stop()


def profiled_spec(workload: str, stages: int) -> PipelineSpec:
    """The run to profile: a chain of `stages`, or one of bench_execution's DAGs."""
    if workload == "chain":
        return validate_data(chain("profiled", stages))
    from benchmarks.bench_execution import dag_spec, lattice_spec, skewed_dag

    return dag_spec("profiled", *skewed_dag()) if workload == "skewed" else lattice_spec(10, 10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", type=int, default=200, help="stages of the chain (default 200)")
    parser.add_argument(
        "--workload", choices=("chain", "skewed", "lattice100"), default="chain", help="what to run"
    )
    args = parser.parse_args()
    spec = profiled_spec(args.workload, args.stages)
    with one_worker("profile") as (r, client, _):
        client.submit(validate_data(chain("warm-up", 5))).wait(timeout=60)
        r.config_set("slowlog-log-slower-than", 0)
        r.config_set("slowlog-max-len", 1_000_000)
        r.slowlog_reset()
        client.submit(spec).wait(timeout=300)
        entries = r.slowlog_get(1_000_000)
    names = script_names()
    total: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    for entry in entries:
        words = [w.decode(errors="replace") if isinstance(w, bytes) else str(w) for w in entry["command"]]
        if isinstance(entry["command"], str | bytes):
            words = (
                entry["command"].decode(errors="replace")
                if isinstance(entry["command"], bytes)
                else entry["command"]
            ).split()
        what = words[0].lower()
        if what == "evalsha" and len(words) > 1:
            what = f"evalsha {names.get(words[1], words[1][:8])}"
        total[what][0] += 1
        total[what][1] += int(entry["duration"])
    n = len(spec.stages)
    print(
        f"{args.workload}, {n} stages; SLOWLOG, every command (µs; a script's inner calls in their rows too):"
    )
    print(f"{'command':<24} {'calls':>7} {'total':>9} {'per call':>9} {'per stage':>10}")
    for what, (calls, usec) in sorted(total.items(), key=lambda kv: -kv[1][1])[:25]:
        print(f"{what:<24} {calls:>7} {usec:>9} {usec / calls:>9.1f} {usec / n:>10.1f}")


if __name__ == "__main__":
    main()
