"""How long `validate` + `plan` take on a 10,000-stage pipeline file (target: under 1 s).

    python benchmarks/bench_validate.py [--stages 10000] [--runs 5] [--profile]

Generates a file mixing what large pipelines hold - chains, joins of 2-3 parents, matrix
stages, fan-outs, tags, named retry policies, resources, conditions - then times
`load_pipeline` (read, parse, interpolate, validate) and `resolve` (order, levels,
critical path, routing) over several runs and prints each part's median. `bench_execution.py`
runs the same measurement as its `validate10k` workload (`time_validate`).
"""

from __future__ import annotations

import argparse
import cProfile
import itertools
import pstats
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orchestration.graph.resolve import resolve
from orchestration.language.loader import load_document
from orchestration.language.validation import load_pipeline, validate_document
from orchestration.settings import Settings


def pipeline_text(stages: int, seed: int = 7) -> str:
    """A valid pipeline of `stages` stages, in file (and topological) order."""
    rng = random.Random(seed)
    out = [
        "name: bench-large",
        'version: "1"',
        'variables: {mode: full, root: "${BENCH_ROOT:-/tmp/bench}"}',
        "defaults: {retry: {max_attempts: 3, backoff: exponential, delay: 2s, max_delay: 1m}, timeout: 1h}",
        "retry_policies:",
        "  network: {max_attempts: 5, delay: 1s, jitter: true, retry_on: [ConnectionError, TimeoutError]}",
        "stages:",
    ]
    for i in range(stages):
        sid = f"s{i:05d}"
        lines = [f"  - id: {sid}", "    uses: noop"]
        if i:
            roll = rng.random()
            if roll < 0.6 or i < 3:  # a chain link
                needs = [f"s{i - 1:05d}"]
            elif roll < 0.85:  # a join of 2-3 recent parents
                needs = [
                    f"s{j:05d}"
                    for j in sorted(rng.sample(range(max(0, i - 50), i), min(i, rng.choice((2, 3)))))
                ]
            else:  # a new branch off an older stage
                needs = [f"s{rng.randrange(i):05d}"]
            lines.append(f"    needs: [{', '.join(needs)}]")
            if rng.random() < 0.03:
                lines.append(f"    for_each: {needs[0]}")
                lines.append("    max_concurrency: 16")
        if rng.random() < 0.05 and "for_each" not in "".join(lines):
            lines.append("    matrix: {lr: [0.1, 0.01], seed: [1, 2]}")
        lines.append(f"    tags: [{rng.choice(['ingest', 'model', 'report'])}, batch{i % 10}]")
        lines.append(f'    params: {{n: {i}, root: "${{root}}/{sid}"}}')
        if rng.random() < 0.1:
            lines.append("    retry: network")
        if rng.random() < 0.05:
            lines.append(f"    resources: {{memory_gb: {rng.choice((4, 32))}}}")
        if rng.random() < 0.05:
            lines.append("    when: \"variables.mode == 'full'\"")
        if rng.random() < 0.1:
            lines.append("    timeout: 10m")
        out.extend(lines)
    return "\n".join(out) + "\n"


TARGET_S = 1.0


def time_validate(stages: int = 10_000, runs: int = 5, settings: Settings | None = None) -> dict[str, Any]:
    """Generate the file, then time load_pipeline + resolve `runs` times, and each phase apart."""
    settings = settings or Settings()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "large.yaml"
        path.write_text(pipeline_text(stages), encoding="utf-8")
        size = path.stat().st_size
        parts: dict[str, list[float]] = {
            "read, parse, interpolate (loader)": [],
            "validate (models, checks)": [],
            "resolve (plan)": [],
        }
        totals = []
        for _ in range(runs):
            start = time.perf_counter()
            spec = load_pipeline(path, env={}, settings=settings)  # what `validate` runs
            graph = resolve(spec, settings)  # and what `plan` adds
            totals.append(time.perf_counter() - start)
            # the same work again, phase by phase
            marks = [time.perf_counter()]
            document = load_document(path, env={})
            marks.append(time.perf_counter())
            spec = validate_document(document, settings)
            marks.append(time.perf_counter())
            resolve(spec, settings)
            marks.append(time.perf_counter())
            for times, (begin, end) in zip(parts.values(), itertools.pairwise(marks), strict=True):
                times.append(end - begin)
    return {
        "stages": stages,
        "file_bytes": size,
        "nodes": len(graph.nodes),
        "critical_path_stages": len(graph.critical_path),
        "runs": runs,
        "median_s": round(statistics.median(totals), 4),
        "min_s": round(min(totals), 4),
        "max_s": round(max(totals), 4),
        "samples_s": [round(x, 4) for x in totals],
        "phases_median_s": {name: round(statistics.median(times), 4) for name, times in parts.items()},
        "target_s": TARGET_S,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--profile", action="store_true", help="print the top cProfile entries of one run")
    args = parser.parse_args()

    settings = Settings()
    got = time_validate(args.stages, args.runs, settings)
    print(
        f"{args.stages:,} stages, {got['file_bytes'] / 1e6:.1f} MB, {got['nodes']:,} nodes, "
        f"critical path {got['critical_path_stages']:,} stages, {args.runs} runs"
    )
    for name, median in got["phases_median_s"].items():
        print(f"  {name:<36} median {median:.3f} s")
    print(
        f"load_pipeline + resolve (validate + plan): median {got['median_s']:.3f} s "
        f"(min {got['min_s']:.3f}, max {got['max_s']:.3f}; target < {TARGET_S:g} s)"
    )
    if args.profile:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "large.yaml"
            path.write_text(pipeline_text(args.stages), encoding="utf-8")
            profiler = cProfile.Profile()
            profiler.enable()
            resolve(load_pipeline(path, env={}, settings=settings), settings)
            profiler.disable()
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)
    return 0


if __name__ == "__main__":
    sys.exit(main())
