"""What a failover test recorded, read back: stage executions, acknowledged commits, runs given out.

Three kinds of JSONL lines, each fsync'd by its writer before it goes on:
- the stages (stages.py) write a `start` and an `end` line per body execution, one file per process
  (so lines of concurrent processes never interleave, and a SIGKILLed process loses at most its
  last, partial line, which is skipped here);
- the workers write one line per acknowledged commit (`CHORDFLOW_TEST_ACK_LOG`), and the submitter
  one per acknowledged run (`{"run": id, "created": true}`);
- the harness writes one line per run id `submit` handed it (`{"run": id, "submitted": true}`).

Hashes: `text_hash` is the sha256 of JSON text exactly as committed (what an ack names);
`value_hash` is the sha256 of a value's canonical JSON, so an input a stage parsed and the output
Redis stored (a fan-out's assembled list is built by Lua, not by `json.dumps`) compare equal.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: A unit is one stage, or one item of a fan-out: (run id, stage id, item or None).
Unit = tuple[str, str, int | None]

#: Outcomes of a commit that ends its unit (an ack of `retrying` does not).
TERMINAL_OUTCOMES = frozenset({"succeeded", "failed", "skipped", "fallback"})


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def value_hash(value: Any) -> str:
    return text_hash(json.dumps(value, sort_keys=True, separators=(",", ":")))


@dataclass(frozen=True)
class Execution:
    """One execution of a stage body: its start line, and its end line unless its process died."""

    exec_id: str
    run: str
    stage: str
    item: int | None
    attempt: int
    token: str | None  # None: the worker did not say (see stages.py)
    pid: int
    start: float
    inputs: dict[str, str]  # parent stage id -> value_hash of the output this execution read
    end: float | None = None
    output_hash: str | None = None  # text_hash of the output it returned (None: it raised)
    cancelled: bool = False  # it was told its lease was lost (ctx.cancelled()) before it ended

    @property
    def unit(self) -> Unit:
        return (self.run, self.stage, self.item)


@dataclass(frozen=True)
class Ack:
    """A commit a worker was told is durable (after WAIT, when CHORDFLOW_REPLICAS_ACK is on)."""

    run: str
    stage: str
    item: int | None
    attempt: int
    token: str
    outcome: str
    output_hash: str | None
    t: float

    @property
    def unit(self) -> Unit:
        return (self.run, self.stage, self.item)


@dataclass
class History:
    executions: list[Execution] = field(default_factory=list)
    acks: list[Ack] = field(default_factory=list)
    given_runs: set[str] = field(default_factory=set)  # run ids a client was given


def read_lines(path: Path) -> Iterator[dict[str, Any]]:
    """The JSON objects of a JSONL file; a torn line (its writer was SIGKILLed mid-write) is skipped."""
    if not path.exists():
        return
    with path.open(encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                yield value


def executions_from(lines: Iterable[dict[str, Any]]) -> list[Execution]:
    """Pair each `start` line with its `end` line (same exec id); a start without an end stays open."""
    starts: dict[str, dict[str, Any]] = {}
    ends: dict[str, dict[str, Any]] = {}
    for line in lines:
        (starts if line.get("event") == "start" else ends)[str(line.get("exec"))] = line
    found = []
    for exec_id, s in starts.items():
        e = ends.get(exec_id)
        found.append(
            Execution(
                exec_id=exec_id,
                run=s["run"],
                stage=s["stage"],
                item=s.get("item"),
                attempt=int(s["attempt"]),
                token=None if s.get("token") is None else str(s["token"]),
                pid=int(s["pid"]),
                start=float(s["t"]),
                inputs=dict(s.get("inputs") or {}),
                end=None if e is None else float(e["t"]),
                output_hash=None if e is None else e.get("output_hash"),
                cancelled=bool(e and e.get("cancelled")),
            )
        )
    return sorted(found, key=lambda x: x.start)


def acks_from(lines: Iterable[dict[str, Any]]) -> tuple[list[Ack], set[str]]:
    """The acknowledged commits, and the run ids whose creation was acknowledged."""
    acks, created = [], set()
    for line in lines:
        if line.get("created"):
            created.add(str(line["run"]))
        elif "outcome" in line:
            acks.append(
                Ack(
                    run=line["run"],
                    stage=line["stage"],
                    item=line.get("item"),
                    attempt=int(line["attempt"]),
                    token=str(line["token"]),
                    outcome=line["outcome"],
                    output_hash=line.get("output_hash"),
                    t=float(line.get("t", 0.0)),
                )
            )
    return acks, created


def load(record_dir: Path, ack_log: Path, submitted_log: Path) -> History:
    """Everything recorded under one harness run."""
    stage_lines = [line for path in sorted(record_dir.glob("*.jsonl")) for line in read_lines(path)]
    acks, created = acks_from(read_lines(ack_log))
    submitted = {str(line["run"]) for line in read_lines(submitted_log) if line.get("submitted")}
    return History(executions_from(stage_lines), acks, submitted | created)
