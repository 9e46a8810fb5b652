"""Stage types of the failover harness (`--import tests.ha.stages`): each body's start and end are
recorded, fsync'd, before the body goes on, so a SIGKILL loses nothing that happened.

One JSONL file per process under `HA_RECORD_DIR` (history.py reads them). A start line has the
run, stage, item, attempt, fencing token, pid, time and the hash of every input it read; an end
line its output's hash and whether the attempt was told it lost its lease. Every output carries a
nonce, so two executions of one unit never return the same output: a commit lost and redone shows
as another output hash, and a child that read the lost one shows as a stale input.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from typing import Any

from celery import current_task

from orchestration import stage

from . import ack_shim
from .history import text_hash, value_hash

ack_shim.install()  # a stopgap until the workers write CHORDFLOW_TEST_ACK_LOG themselves

_fd: dict[int, int] = {}


def _write(line: dict[str, Any]) -> None:
    pid = os.getpid()
    if pid not in _fd:  # one file per process, opened after the pool's fork
        directory = os.environ["HA_RECORD_DIR"]
        _fd[pid] = os.open(f"{directory}/{pid}.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(_fd[pid], (json.dumps(line, separators=(",", ":")) + "\n").encode())
    os.fsync(_fd[pid])


def token_of(ctx: Any) -> str | None:
    """The attempt's fencing token: `ctx.token` once the context carries it; until then, the lease
    this process keeps for this very context (workers/lease.py holds (run, stage, item, token))."""
    token = getattr(ctx, "token", None)
    if token is not None:
        return str(token)
    app = getattr(current_task, "app", None)
    env = getattr(app, "chordflow_env", None)
    if env is None:
        return None
    held = getattr(env().leases, "_held", {})
    found = [key[3] for key, (held_ctx, _) in list(held.items()) if held_ctx is ctx]
    return str(found[0]) if found else None


def _nonce(value: Any) -> str | None:
    """An output's nonce, for a post-mortem (the checker compares hashes)."""
    return value.get("nonce") if isinstance(value, dict) else None


class Recorded:
    """One execution of a stage body: `start()` on entry, `end(output)` on the way out."""

    def __init__(self, ctx: Any):
        self.ctx, self.exec_id = ctx, uuid.uuid4().hex

    def start(self) -> None:
        ctx = self.ctx
        token = token_of(ctx)
        if token is not None:
            ack_shim.ATTEMPTS[(ctx.run_id, ctx.stage_id, ctx.item_index, token)] = ctx.attempt
        _write(
            {
                "event": "start",
                "exec": self.exec_id,
                "run": ctx.run_id,
                "stage": ctx.stage_id,
                "item": ctx.item_index,
                "attempt": ctx.attempt,
                "token": token,
                "pid": os.getpid(),
                "t": time.time(),
                "inputs": {sid: value_hash(value) for sid, value in ctx.inputs.items()},
                "nonces": {sid: _nonce(value) for sid, value in ctx.inputs.items()},
            }
        )

    def end(self, output: Any = None, raised: bool = False) -> None:
        text = None if raised else json.dumps(output, separators=(",", ":"))
        _write(
            {
                "event": "end",
                "exec": self.exec_id,
                "t": time.time(),
                "output_hash": None if text is None else text_hash(text),
                "nonce": _nonce(output),
                "cancelled": self.ctx.cancelled(),
            }
        )


def _work(ctx: Any, seconds: float) -> None:
    """Sleep `seconds` in small steps, stopping early when the lease is lost."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not ctx.cancelled():
        time.sleep(min(0.02, max(0.0, deadline - time.monotonic())))


def _output(ctx: Any) -> dict[str, Any]:
    return {"stage": ctx.stage_id, "item": ctx.item_index, "nonce": uuid.uuid4().hex}


@stage("ha.step")
def step(ctx: Any, seconds: float = 0.05) -> dict[str, Any]:
    """Work a little; return this execution's own output."""
    record = Recorded(ctx)
    record.start()
    _work(ctx, seconds)
    output = _output(ctx)
    record.end(output)
    return output


@stage("ha.items")
def items(ctx: Any, count: int = 10) -> list[int]:
    """The list a fan-out runs over: the same every execution (its items' outputs carry nonces)."""
    record = Recorded(ctx)
    record.start()
    output = list(range(count))
    record.end(output)
    return output


@stage("ha.fail_once")
def fail_once(ctx: Any, seconds: float = 0.05) -> dict[str, Any]:
    """Fail the first attempt (a retryable ConnectionError), succeed after: the retry path under
    test is the pipeline's `retry.delay` (a countdown below the delay-set threshold, or the set)."""
    record = Recorded(ctx)
    record.start()
    _work(ctx, seconds)
    if ctx.attempt == 1:
        record.end(raised=True)
        raise ConnectionError("the first attempt fails on purpose")
    output = _output(ctx)
    record.end(output)
    return output
