"""The ack log of a worker with WAIT off: every commit Redis accepted, as `CHORDFLOW_TEST_ACK_LOG` lines.

A worker logs its acknowledged commits itself (durability.record) only with
`CHORDFLOW_REPLICAS_ACK` on, once WAIT confirmed them. With it off (the control variant), the
commit Redis's reply confirms is what the worker acts on, so that is the acknowledgement: this
module observes the store's own `finish` and `retry` in the worker process (the real scripts run;
only their replies are read) and writes the same lines for each commit accepted. It installs only
when the worker writes no ack log of its own (WAIT off).
"""

from __future__ import annotations

import functools
import json
import os
import time
from typing import Any

from orchestration.engine.transitions import Transitions
from orchestration.settings import Settings

from .history import text_hash

#: (run, stage, item, token) -> attempt, noted by the stage bodies of this process (stages.py)
ATTEMPTS: dict[tuple[str, str, int | None, str], int] = {}


def _append(line: dict[str, Any]) -> None:
    fd = os.open(os.environ["CHORDFLOW_TEST_ACK_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(line, separators=(",", ":")) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def _finish(original: Any) -> Any:
    @functools.wraps(original)
    def finish(self: Transitions, req: Any) -> Any:
        commit = original(self, req)
        if req.token and commit.committed:
            unit = (req.run_id, req.stage_id, req.item, str(req.token))
            _append(
                {
                    "run": req.run_id,
                    "stage": req.stage_id,
                    "item": req.item,
                    "attempt": ATTEMPTS.get(unit, 0),
                    "token": str(req.token),
                    "outcome": str(req.outcome),
                    "output_hash": text_hash(req.output_json) if req.output_json else None,
                    "t": time.time(),
                }
            )
        return commit

    return finish


def _retry(original: Any) -> Any:
    @functools.wraps(original)
    def retry(self: Transitions, req: Any) -> Any:
        reply = original(self, req)
        if reply.held:
            m = req.message
            _append(
                {
                    "run": m.run_id,
                    "stage": m.stage_id,
                    "item": m.item,
                    "attempt": m.attempt,
                    "token": str(req.token),
                    "outcome": "retrying",
                    "output_hash": None,
                    "t": time.time(),
                }
            )
        return reply

    return retry


def install() -> bool:
    """Observe the store's commits in this process, unless the worker logs its own acks (WAIT on)."""
    if not os.environ.get("CHORDFLOW_TEST_ACK_LOG") or Settings().replicas_ack:
        return False
    Transitions.finish = _finish(Transitions.finish)  # type: ignore[method-assign]
    Transitions.retry = _retry(Transitions.retry)  # type: ignore[method-assign]
    return True
