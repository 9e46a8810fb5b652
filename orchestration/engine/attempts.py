"""Every attempt of every stage of a run, read from the run's event stream.

A stage's record in Redis holds only its current attempt; the event stream holds them all:
`running` starts an attempt (with its attempt number, host and time), `retrying` ends one that
will be tried again (with its error), a terminal state ends the last one, and a `retry` of the
run (a `run running` event marked `retry`) starts a new round whose attempts count from 1 again.
An attempt that started again before it ended lost its worker (`lost`: its lease ran out and the
reaper sent it again).

`AttemptHistory` is fed the events in order, as many times as new ones come (it remembers the
last id it read), so a page that polls reads only what is new. Pure: no Redis here.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from orchestration.states import TERMINAL, RunStatus, State

# the outcome of an attempt: a stage state, or one of these
RETRIED = "retried"  # failed, and was tried again
LOST = "lost"  # started again before it ended: its worker stopped or lost its lease
RUNNING = State.RUNNING
CACHE_HIT = "cache hit"


@dataclass
class AttemptRecord:
    """One attempt of a stage (or of one fan-out item): times in epoch seconds."""

    stage_id: str
    item: int | None
    attempt: int
    round: int  # 0 for the run as submitted, 1 after the first `retry`, ...
    host: str | None
    started_at: float | None
    finished_at: float | None = None
    outcome: str = RUNNING
    error: dict[str, Any] | None = None

    @property
    def duration_s(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return max(0.0, self.finished_at - self.started_at)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["duration_s"] = None if self.duration_s is None else round(self.duration_s, 3)
        return data


def _number(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None


def parse_error(raw: Any) -> dict[str, Any] | None:
    """An error record as an object (it is stored as JSON text)."""
    if raw in (None, ""):
        return None
    if isinstance(raw, dict):
        return raw
    try:
        value = json.loads(raw)
    except (TypeError, ValueError):
        return {"message": str(raw)}
    return value if isinstance(value, dict) else {"message": str(value)}


@dataclass
class AttemptHistory:
    """The attempts of a run's stages and items, as the events read so far tell them."""

    after: str = "0-0"  # the id of the last event read
    round: int = 0
    _by_unit: dict[tuple[str, int | None], list[AttemptRecord]] = field(default_factory=dict)
    _open: dict[tuple[str, int | None], AttemptRecord] = field(default_factory=dict)

    def feed(self, events: Iterable[tuple[str, Mapping[str, str]]]) -> None:
        for eid, event in events:
            self.after = eid
            self._event(event)

    def _event(self, e: Mapping[str, str]) -> None:
        kind, state, t = e.get("kind"), e.get("state", ""), _number(e.get("t"))
        if kind == "run":
            if state == RunStatus.RUNNING and e.get("retry"):
                self.round += 1
            return
        stage = e.get("stage")
        if not stage:
            return
        item = int(e["item"]) if (e.get("item") or "").isdigit() else None
        unit = (stage, item)
        if kind == "stage" and state == State.RUNNING and e.get("items") is not None:
            return  # a fan-out started: its items have the attempts
        if kind == "stage" and state == State.RUNNING:
            previous = self._open.pop(unit, None)
            if previous is not None:
                previous.outcome = LOST
            attempt = int(e["attempt"]) if (e.get("attempt") or "").isdigit() else 1
            record = AttemptRecord(stage, item, attempt, self.round, e.get("host") or None, t)
            self._by_unit.setdefault(unit, []).append(record)
            self._open[unit] = record
        elif kind == "stage" and state == State.RETRYING:
            self._close(unit, RETRIED, t, parse_error(e.get("error")))
        elif state in TERMINAL and (kind == "item" or (kind == "stage" and item is None)):
            self._close(unit, state, t)
            if kind == "stage" and state in (State.CANCELLED, State.FAILED, State.UPSTREAM_FAILED):
                # a fan-out that ended: items still running are dropped with it
                for other in [u for u in self._open if u[0] == stage and u[1] is not None]:
                    self._close(other, State.CANCELLED, t)

    def _close(
        self, unit: tuple[str, int | None], outcome: str, t: float | None, error: dict[str, Any] | None = None
    ) -> None:
        record = self._open.pop(unit, None)
        if record is None:
            return
        record.outcome, record.finished_at, record.error = outcome, t, error

    # -- reading ------------------------------------------------------------------------------------
    def of(self, stage_id: str, item: int | None = None) -> list[AttemptRecord]:
        """The attempts of a stage (or of one of its items), oldest first."""
        return list(self._by_unit.get((stage_id, item), []))

    def items_of(self, stage_id: str) -> dict[int, list[AttemptRecord]]:
        """Item index -> its attempts, for a fan-out stage."""
        return {
            unit[1]: list(records)
            for unit, records in sorted(self._by_unit.items(), key=lambda kv: kv[0][1] or 0)
            if unit[0] == stage_id and unit[1] is not None
        }

    def all(self) -> list[AttemptRecord]:
        """Every attempt of every stage and item, in no particular order."""
        return [r for records in self._by_unit.values() for r in records]


def complete(
    records: list[AttemptRecord],
    stage_id: str,
    item: int | None,
    state: str,
    detail: Mapping[str, Any],
    cached: bool = False,
    rounds: Sequence[Mapping[str, Any]] = (),
) -> list[AttemptRecord]:
    """A unit's attempts with what only its record holds: the error of its last attempt (when that
    attempt failed or fell back), a cache hit, and a record made from it when the events are gone
    (expired or trimmed). `detail`: the unit's record (attempt, host, started_at, finished_at,
    error), with `error` already an object or JSON text. A fan-out stage (`items_total` in its
    record) has no attempt of its own: its items have them. `rounds`: the stage's records as each
    `retry` of the run kept them (`history`), one per earlier round: the error of a round's last
    attempt, when it failed."""
    if not records and int(detail.get("attempt") or 0) > 0 and "items_total" not in detail:
        records = [
            AttemptRecord(
                stage_id,
                item,
                int(detail["attempt"]),
                0,
                detail.get("host") or None,
                _number(detail.get("started_at")),
                _number(detail.get("finished_at")) if state in TERMINAL else None,
                state if state in TERMINAL or state == State.RUNNING else RUNNING,
                parse_error(detail.get("error")),  # without the events, the last error known
            )
        ]
    for number, kept in enumerate(rounds):
        ending = [r for r in records if r.round == number]
        if ending and ending[-1].outcome in (State.FAILED, State.FALLBACK) and ending[-1].error is None:
            ending[-1].error = parse_error(kept.get("error"))
    if records:
        last = records[-1]
        if last.outcome in (State.FAILED, State.FALLBACK) and last.error is None:
            last.error = parse_error(detail.get("error"))
        if cached and last.outcome == State.SUCCEEDED:
            last.outcome = CACHE_HIT
    return records
