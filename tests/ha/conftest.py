"""The failover harness (issue 19): a Sentinel cluster, workers and nemeses per seed (harness.py).

Seeds 1-3 run in every test run (CI included, about 80 s); seeds 4-10 are marked `slow` and run
with `CHORDFLOW_HA_ALL_SEEDS=1` (about 4 more minutes). Each seed's summary (faults, counts, time)
is written to tests/artifacts/ha/ for the report.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("CHORDFLOW_HA_ALL_SEEDS") == "1":
        return
    extra = [i for i in items if HERE in Path(str(i.path)).parents and i.get_closest_marker("slow")]
    if extra:
        config.hook.pytest_deselected(items=extra)
        items[:] = [i for i in items if i not in extra]
