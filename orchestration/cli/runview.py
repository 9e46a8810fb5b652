"""A run as the read commands and the run page show it: `Client.status` plus every attempt.

Each stage gets `attempt_history` (every attempt: attempt number, round, host, start, end,
outcome, error; read from the event stream, engine/attempts.py), `cached` (its output came
from the cache), and `error` only while that error is current (the stage failed, fell back or
waits for its retry): a stage that succeeded on its second attempt shows no error, and the
first attempt's error is in its history. `waiting` says what a queued stage (or a running
fan-out's items) waits for: {label: `pool llm 4/4`, since_at, items}, or null (capacity_view.py).
With `items`, a fan-out stage lists its items (state, attempt, host, times, error, attempts, and
`waiting`).

`to_json` makes what a command prints with `--json` typed: times as ISO 8601 (UTC) strings,
numbers as numbers, errors and histories as nested objects, never JSON inside a string.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from orchestration.api import Client
from orchestration.cli.capacity_view import waiting_of
from orchestration.engine.attempts import AttemptHistory, complete, parse_error
from orchestration.states import State

ERROR_CURRENT = frozenset({State.FAILED, State.RETRYING, State.FALLBACK})
EVENTS_PAGE = 10_000
HISTORY_NUMBERS = (
    "attempt",
    "started_at",
    "finished_at",
    "retry_at",
    "failed_at",
    "items_total",
    "items_done",
)
HISTORY_HIDDEN = ("token", "task_id", "lease_exp", "history")


def read_history(client: Client, run_id: str, history: AttemptHistory | None = None) -> AttemptHistory:
    """`history` brought up to date with the run's events (a new one: read from the first event)."""
    history = history or AttemptHistory()
    while True:
        events = client.store.runs.events(run_id, history.after, count=EVENTS_PAGE)
        history.feed(events)
        if len(events) < EVENTS_PAGE:
            return history


def _typed_record(record: dict[str, Any]) -> dict[str, Any]:
    """A stage record kept by `retry` (every value a string) with numbers and the error as objects."""
    out: dict[str, Any] = {}
    for key, value in record.items():
        if key in HISTORY_HIDDEN:
            continue
        if key == "error":
            out[key] = parse_error(value)
        elif key in HISTORY_NUMBERS:
            try:
                number = float(value)
                out[key] = int(number) if number.is_integer() and key == "attempt" else number
            except (TypeError, ValueError):
                out[key] = value
        else:
            out[key] = value
    return out


def run_view(
    client: Client, run_id: str, items: bool = False, history: AttemptHistory | None = None
) -> dict[str, Any]:
    """`Client.status(run_id)` with each stage's attempts, `cached`, and its error only while current."""
    status = client.status(run_id)
    history = read_history(client, run_id, history)
    ids = list(status["stages"])
    details = client.store.runs.stage_details(run_id, ids)
    for sid, stage in status["stages"].items():
        detail = dict(details.get(sid) or {})
        detail["error"] = stage.get("error")
        stage["cached"] = detail.get("cache") == "hit"
        stage["waiting"] = waiting_of(client.store, run_id, sid, stage, detail)  # a slot, or room on a worker
        rounds = [r for r in stage.get("history", []) if isinstance(r, dict)]
        records = complete(history.of(sid), sid, None, stage["state"], detail, stage["cached"], rounds)
        stage["attempt_history"] = [r.to_dict() for r in records]
        stage["tries"] = len(records)  # attempts in every round (a `retry` counts from 1 again)
        if stage["state"] not in ERROR_CURRENT:
            stage["error"] = None
        if "history" in stage:
            stage["history"] = [_typed_record(r) for r in stage["history"] if isinstance(r, dict)]
        if items and "items_total" in stage:
            stage["items"] = item_rows(client, run_id, sid, history)
    return status


def item_rows(client: Client, run_id: str, stage_id: str, history: AttemptHistory) -> list[dict[str, Any]]:
    """A fan-out stage's items: index, state, attempt, host, times, error (while current), attempts."""
    records = client.store.runs.items(run_id, stage_id)
    attempts = history.items_of(stage_id)
    rows = []
    for index in sorted(set(records) | set(attempts)):
        record = records.get(index, {})
        state = record.get("state", State.PENDING)
        done = complete(attempts.get(index, []), stage_id, index, state, record)
        rows.append(
            {
                "index": index,
                "state": state,
                "attempt": int(record.get("attempt") or 0) or None,
                "host": record.get("host") or None,
                "started_at": _number(record.get("started_at")),
                "finished_at": _number(record.get("finished_at")),
                "error": parse_error(record.get("error")) if state in ERROR_CURRENT else None,
                "waiting": record.get("waiting") or None,  # what a queued item waits for: `pool llm 4/4`
                "attempt_history": [r.to_dict() for r in done],
            }
        )
    return rows


def _number(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None


# -- typed JSON for programs ------------------------------------------------------------------------


def iso(t: float | None) -> str | None:
    """Epoch seconds as ISO 8601 in UTC, to the millisecond (None stays None)."""
    if t is None:
        return None
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def to_json(data: Any) -> Any:
    """`data` for `--json`: every `*_at` (and `t`) number as an ISO time; strings that hold JSON
    objects (errors) as the objects; numbers in strings of known numeric fields as numbers."""
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            if (key.endswith("_at") or key in ("t", "first", "last")) and isinstance(value, int | float):
                out[key] = iso(float(value))
            elif key == "error" and isinstance(value, str):
                out[key] = parse_error(value)
            else:
                out[key] = to_json(value)
        return out
    if isinstance(data, list | tuple):
        return [to_json(v) for v in data]
    return data


def number_or_text(value: Any) -> Any:
    """A record's string value as a number when it is one (`"3"` -> 3, `"1.5"` -> 1.5)."""
    if not isinstance(value, str):
        return value
    try:
        number = float(value)
    except ValueError:
        return value
    return int(number) if number.is_integer() and "." not in value and "e" not in value.lower() else number


def run_record(record: dict[str, str]) -> dict[str, Any]:
    """A run record (`Client.runs`) typed: times as numbers (epoch s), counters as numbers."""
    out: dict[str, Any] = {}
    for key in ("run_id", "pipeline", "version", "status", "created_at", "finished_at", "failed_stage"):
        value = record.get(key)
        if key.endswith("_at"):
            out[key] = _number(value)
        else:
            out[key] = value if value not in ("",) else None
    for key in ("total", "remaining", "retries"):
        if record.get(key) not in (None, ""):
            out[key] = number_or_text(record[key])
    if out.get("created_at") is not None and out.get("finished_at") is not None:
        out["duration_s"] = round(out["finished_at"] - out["created_at"], 3)
    return out


# event fields that hold numbers, and those that are flags ("1" or absent)
_EVENT_NUMBERS = ("attempt", "item", "items", "round", "delay_ms")
_EVENT_FLAGS = ("retry",)


def typed_event(event: dict[str, str]) -> dict[str, Any]:
    """An event of a run's stream as `watch --json` gives it: `t` as an ISO time, numbers as
    numbers (`item` null for a stage's own event), flags as booleans, an error as an object."""
    typed: dict[str, Any] = dict(event)
    typed["t"] = iso(float(event["t"])) if event.get("t") else None
    for name in _EVENT_NUMBERS:
        if name in event:
            typed[name] = number_or_text(event[name]) if event[name] != "" else None
    for name in _EVENT_FLAGS:
        if name in event:
            typed[name] = event[name] not in ("", "0")
    if event.get("error"):
        typed["error"] = to_json({"error": event["error"]})["error"]
    return typed


__all__ = ["iso", "item_rows", "read_history", "run_record", "run_view", "to_json", "typed_event"]
