"""What every end-to-end failover test asserts besides the checks: it did real work, and its
summary (faults, counts, time) is kept in tests/artifacts/ha/ for the report."""

from __future__ import annotations

import shutil
import time

from tests.integration.conftest import ARTIFACTS

from .harness import SeedResult

WAVE = 5  # the five pipelines of pipelines.py


def runs(planned: int) -> int:
    """One wave at the start, one more before each fault."""
    return WAVE * (planned + 1)


def keep(name: str, result: SeedResult, files: bool = True) -> str:
    """Write the summary; with `files`, a seed whose checks failed keeps its records, acks and worker
    logs there too (pytest's own temporary directories do not last)."""
    summary = result.summary()
    (ARTIFACTS / "ha").mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "ha" / f"{name}.txt").write_text(summary + "\n")
    if files and not result.report.held:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(result.started))  # one directory per failure
        shutil.copytree(result.dir, ARTIFACTS / "ha" / f"{name}-files-{stamp}", dirs_exist_ok=True)
    print(summary)
    return summary


def did_real_work(result: SeedResult, planned: int, summary: str) -> None:
    """Not vacuous: every planned fault struck, the runs were given out, commits were acknowledged."""
    assert len(result.fired) == planned, summary
    assert all(f.done_at >= f.at for f in result.fired), summary
    assert len(result.history.given_runs) == runs(planned), summary
    assert len(result.history.executions) >= 500, summary
    assert len(result.history.acks) >= 500, summary
    assert result.report.by_name("4 inputs are final outputs").counts["edges"] >= 500, summary
