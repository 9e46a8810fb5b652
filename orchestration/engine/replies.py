"""The replies of the attempt scripts (begin, finish, retry, claim), typed and decoded in one place.

A Lua script answers with a flat list; this module is the only code that reads one by position.
Each `decode_*` function turns a raw reply into a frozen dataclass (or raises `BadReply`, which
names the script and what came back), so the rest of Chordflow matches on types and enums:

    begin.lua   BeginRun | BeginPoison | BeginWait | BeginParked | BeginDrop | BeginDuplicate
    finish.lua  Commit (its `verdict` a CommitVerdict)
    retry.lua   RetryReply
    claim.lua   the claims' new expiry (ms, Redis's clock)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class BadReply(RuntimeError):
    """A script answered with something its decoder does not know: a bug, never a user's input."""

    def __init__(self, script: str, raw: Any):
        super().__init__(f"{script} answered {raw!r:.200}, which is not one of its replies")
        self.script, self.raw = script, raw


# -- begin.lua ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class BeginRun:
    """The attempt may run: its fencing token, the JSON outputs of the stages it reads (in the order
    asked), and the GPU devices its limits gave it ('0,1', or '')."""

    token: str
    inputs: list[str]
    devices: str = ""


@dataclass(frozen=True, slots=True)
class BeginPoison:
    """The attempt holds the stage, but the workers running it died `crashes` times: it must commit
    a failure (the message is quarantined) instead of running the body again."""

    token: str
    crashes: int
    inputs: list[str]
    devices: str = ""


@dataclass(frozen=True, slots=True)
class BeginWait:
    """Its limits are full: the message waits in Redis (limits.py); `label` says for what."""

    label: str

    @property
    def why(self) -> str:
        return self.label


@dataclass(frozen=True, slots=True)
class BeginParked:
    """The run is paused: the message waits in the run's parked set until it is resumed."""


@dataclass(frozen=True, slots=True)
class BeginDrop:
    """Nothing to run: the run is gone or not running, or the fan-out stage no longer runs."""

    why: str


@dataclass(frozen=True, slots=True)
class BeginDuplicate:
    """Another delivery of an attempt that runs elsewhere, ended, or was superseded."""

    why: str


BeginReply = BeginRun | BeginPoison | BeginWait | BeginParked | BeginDrop | BeginDuplicate
Holding = BeginRun | BeginPoison  # the replies that hand the attempt a token


def _texts(raw: Any) -> list[str]:
    return ["null" if v is None else str(v) for v in raw] if isinstance(raw, list) else []


def decode_begin(raw: Any, gated: bool = False) -> BeginReply:
    """The reply of begin.lua; `gated`: the call carried limits, so a token's reply ends with the
    GPU devices given."""
    if not isinstance(raw, list) or not raw:
        raise BadReply("begin.lua", raw)
    kind, rest = raw[0], raw[1:]
    devices = str(rest[-1]) if gated and kind in ("run", "poison") and rest else ""
    if gated and kind in ("run", "poison"):
        rest = rest[:-1]
    if kind == "run" and len(rest) == 2:
        return BeginRun(str(rest[0]), _texts(rest[1]), devices)
    if kind == "poison" and len(rest) == 3:
        return BeginPoison(str(rest[0]), int(rest[1]), _texts(rest[2]), devices)
    if kind == "wait" and len(rest) == 1:
        return BeginWait(str(rest[0]))
    if kind == "parked" and not rest:
        return BeginParked()
    if kind == "drop" and len(rest) == 1:
        return BeginDrop(str(rest[0]))
    if kind == "dup" and len(rest) == 1:
        return BeginDuplicate(str(rest[0]))
    raise BadReply("begin.lua", raw)


# -- finish.lua ---------------------------------------------------------------------------------
class CommitVerdict(StrEnum):
    """What finish.lua decided about a commit."""

    OK = "ok"  # committed (the stage's end, or a stage decided outside any attempt)
    ITEM = "item"  # one fan-out item committed; its stage goes on
    STALE = "stale"  # the attempt no longer holds the stage (a newer attempt, or it ended): nothing written
    LATE = "late"  # an item of a stage that already ended: dropped with it
    INVALID = "invalid"  # a check refused what the attempt wrote: nothing written, `reason` says why
    ALREADY = "already"  # this very attempt's commit is already there (a re-sent commit): nothing new


COMMITTED = frozenset({CommitVerdict.OK, CommitVerdict.ITEM, CommitVerdict.ALREADY})


@dataclass(frozen=True, slots=True)
class Replication:
    """How many replicas confirmed a write (Redis WAIT), and how many had to: CHORDFLOW_REPLICAS_ACK,
    or every replica attached to the primary when it was written, if more (engine/durability.py)."""

    confirmed: int
    required: int

    @property
    def ok(self) -> bool:
        """Enough replicas have it: the write is acknowledged."""
        return self.confirmed >= self.required


@dataclass(frozen=True, slots=True)
class StartedHere:
    """A child (CommitRequest.in_place), or the next item of the chunk (in_place_item), that the
    commit started for the committing worker to run next: its stage id, and its attempt's start as
    begin.lua would have answered it."""

    stage_id: str
    begun: BeginRun


@dataclass(frozen=True, slots=True)
class Commit:
    """What finish.lua decided: the verdict, whether the run ended (and how), the children it made
    ready that the caller sends (a fan-out: only Python starts one), the task ids a fail-fast
    commit revoked, and a windowed fan-out's next item when no template came to enqueue it."""

    verdict: CommitVerdict
    finalized: bool = False
    run_status: str = ""
    ready: list[str] = field(default_factory=list)
    revoke: list[str] = field(default_factory=list)
    next_item: int | None = None
    reason: str = ""  # why, when the verdict is INVALID (nothing was written)
    replication: Replication | None = None  # CHORDFLOW_REPLICAS_ACK: its replicas; None: not asked
    in_place: StartedHere | None = None  # the child it started for this worker to run next

    @property
    def committed(self) -> bool:
        """The attempt's end is in Redis (now, or by an earlier send of the same commit)."""
        return self.verdict in COMMITTED


def decode_finish(raw: Any) -> Commit:
    """The reply of finish.lua: {verdict, finalized, run status or reason, ready, revoke, next} and,
    from a commit that went through, the child it started in place ({child, token, inputs} or '')."""
    if not isinstance(raw, list) or len(raw) not in (6, 7):
        raise BadReply("finish.lua", raw)
    try:
        verdict = CommitVerdict(raw[0])
    except ValueError:
        raise BadReply("finish.lua", raw) from None
    finalized, status, ready, revoke, next_item = raw[1:6]
    if verdict is CommitVerdict.INVALID:
        return Commit(verdict, reason=str(status))
    here = raw[6] if len(raw) == 7 else ""
    started = None
    if here not in ("", None):
        if not (isinstance(here, list) and len(here) == 3):
            raise BadReply("finish.lua", raw)
        started = StartedHere(str(here[0]), BeginRun(str(here[1]), _texts(here[2])))
    return Commit(
        verdict,
        bool(finalized),
        str(status),
        _texts(ready),
        _texts(revoke),
        int(next_item) if next_item not in ("", None) else None,
        in_place=started,
    )


# -- retry.lua, claim.lua -----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RetryReply:
    """Whether the attempt still held the stage (and so recorded the retry), and when it is due
    (ms, Redis's clock)."""

    held: bool
    due_ms: int | None = None


def decode_retry(raw: Any) -> RetryReply:
    if isinstance(raw, list) and raw == ["stale"]:
        return RetryReply(False)
    if isinstance(raw, list) and len(raw) == 2 and raw[0] == "ok":
        return RetryReply(True, int(raw[1]))
    raise BadReply("retry.lua", raw)


def decode_claim(raw: Any) -> int:
    """The claims' new expiry (ms, Redis's clock)."""
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    raise BadReply("claim.lua", raw)


def inputs_of(reply: Holding, read: Sequence[str]) -> dict[str, str]:
    """{stage id: output JSON} of the stages the attempt asked to read, from its begin reply."""
    return dict(zip(read, reply.inputs, strict=False))


__all__ = [
    "COMMITTED",
    "BadReply",
    "BeginDrop",
    "BeginDuplicate",
    "BeginParked",
    "BeginPoison",
    "BeginReply",
    "BeginRun",
    "BeginWait",
    "Commit",
    "CommitVerdict",
    "Holding",
    "Replication",
    "RetryReply",
    "StartedHere",
    "decode_begin",
    "decode_claim",
    "decode_finish",
    "decode_retry",
    "inputs_of",
]
