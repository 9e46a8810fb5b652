"""The control: with WAIT off (CHORDFLOW_REPLICAS_ACK=0), a lagging kill of the primary loses
commits the workers were told had succeeded, and the checker says so (checks 2-4 fail)."""

from __future__ import annotations

import pytest

from .harness import run_seed
from .outcomes import did_real_work, keep

pytestmark = pytest.mark.ha


def test_without_wait_a_lagging_kill_loses_acknowledged_commits_and_the_checker_sees_it(tmp_path):
    result = run_seed(tmp_path / "control", 0, replicas_ack=0, kinds=("lagging_kill",))
    summary = keep("control", result, files=False)  # its checks fail by design
    did_real_work(result, 1, summary)
    assert "took 0 bytes" not in result.fired[0].detail, summary  # the old primary wrote alone
    failed = result.report.failed()
    assert {"2 acks durable", "3 once per unit", "4 inputs are final outputs"} <= failed, summary
