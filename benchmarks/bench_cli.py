"""How long the `chordflow` command takes from start to exit (wall time, a fresh process each time).

    python benchmarks/bench_cli.py [--runs 5] [--stages 10000]

Targets (issue 21): `chordflow --help` <= 0.3 s and `chordflow validate` of a 5-stage file <= 0.4 s
(median of 5 on an idle machine); `chordflow plan` of a 10,000-stage file <= 1.0 s. No Redis is
configured (CHORDFLOW_* are removed from the environment): these are the commands that need none.
The load average is printed before and after: a busy machine makes every number larger.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_validate import pipeline_text  # a sibling script, not a package

FIVE_STAGES = """\
name: bench-small
version: "1"
stages:
  - {id: extract, uses: noop}
  - {id: clean, uses: noop, needs: [extract]}
  - {id: features, uses: noop, needs: [clean]}
  - {id: train, uses: noop, needs: [features], retry: {max_attempts: 3}}
  - {id: report, uses: noop, needs: [train, clean]}
"""


def chordflow() -> str:
    """The console script next to this interpreter (what a user runs), else `python -m`."""
    script = Path(sys.executable).with_name("chordflow")
    return str(script) if script.exists() else ""


def wall_s(args: list[str], cwd: Path) -> float:
    """Seconds from starting `chordflow ARGS` to its exit; raises if it fails."""
    script = chordflow()
    argv = [script, *args] if script else [sys.executable, "-m", "orchestration.cli.main", *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHORDFLOW_")}
    start = time.perf_counter()
    done = subprocess.run(
        argv, check=False, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"chordflow {' '.join(args)} exited {done.returncode}: {done.stderr.decode()}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--stages", type=int, default=10_000)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        where = Path(scratch)
        (where / "small.yaml").write_text(FIVE_STAGES, encoding="utf-8")
        (where / "large.yaml").write_text(pipeline_text(options.stages), encoding="utf-8")
        cases = [
            ("chordflow --help", ["--help"], 0.3),
            ("chordflow validate small.yaml (5 stages)", ["validate", "small.yaml"], 0.4),
            (f"chordflow plan large.yaml ({options.stages:,} stages)", ["plan", "large.yaml"], 1.0),
            (f"chordflow plan large.yaml --json ({options.stages:,})", ["plan", "large.yaml", "--json"], 1.0),
        ]
        print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        wall_s(["--help"], where)  # warm the file cache once
        for label, args, target_s in cases:
            times = [wall_s(args, where) for _ in range(options.runs)]
            median = statistics.median(times)
            verdict = "met" if median <= target_s else "NOT met"
            print(
                f"{label:<44} median {median:.3f} s  (min {min(times):.3f}, max {max(times):.3f}; "
                f"target <= {target_s} s: {verdict})"
            )
        print(f"load average after:  {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
