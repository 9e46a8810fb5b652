"""`ctx.progress(done, total)`: what a running stage reports is in `status` (and so in the ETA and
the live table), for the attempt that reported it. Real redis-server and worker."""

from __future__ import annotations

import pytest

from orchestration.language.validation import validate_data
from orchestration.states import RunStatus
from workers.context import StageContext

from .conftest import pipeline, wait_until


def test_a_stage_s_reported_progress_is_in_status(bare_cluster):
    cluster = bare_cluster
    cluster.start_worker(env={"CHORDFLOW_IMPORTS": '["tests.defence_stages"]'})
    handle = cluster.client.submit(validate_data(pipeline("progress", {"id": "p", "uses": "test.progress"})))
    seen = wait_until(
        lambda: (cluster.client.status(handle.run_id)["stages"]["p"].get("progress") or {}).get("done")
    )
    assert 1 <= seen <= 4
    assert cluster.client.status(handle.run_id)["stages"]["p"]["progress"]["total"] == 4
    assert handle.wait(timeout=30).status == RunStatus.SUCCEEDED


@pytest.mark.parametrize(("done", "total"), [(1, 0), (-1, 3), (float("nan"), 3), ("1", 3)])
def test_progress_refuses_what_is_not_a_fraction(done, total):
    ctx = StageContext.__new__(StageContext)
    with pytest.raises((ValueError, TypeError), match="ctx.progress"):
        StageContext.progress(ctx, done, total)
