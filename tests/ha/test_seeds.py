"""Ten seeds of faults with CHORDFLOW_REPLICAS_ACK=1 and two replicas: every check holds, and every
run succeeds. Seeds 4-10 are `slow` (CHORDFLOW_HA_ALL_SEEDS=1 runs them, conftest.py)."""

from __future__ import annotations

import pytest

from . import nemesis
from .harness import run_seed
from .outcomes import did_real_work, keep, runs

pytestmark = pytest.mark.ha
#: the first three in every test run (seed 3: two lagging kills in a row), the rest with the slow tests
SEEDS = [pytest.param(seed, marks=[pytest.mark.slow] if seed > 3 else []) for seed in range(1, 11)]


@pytest.mark.parametrize("seed", SEEDS)
def test_a_seed_of_failovers_keeps_every_acknowledged_commit(seed, tmp_path):
    result = run_seed(tmp_path / f"seed{seed}", seed, replicas_ack=1)
    summary = keep(f"seed{seed}", result)
    planned = len(nemesis.plan(seed))
    did_real_work(result, planned, summary)
    assert result.report.held, summary
    assert result.report.by_name("1 runs final").counts["succeeded"] == runs(planned), summary
