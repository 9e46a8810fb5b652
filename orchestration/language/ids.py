"""The ids users hand us: run ids, stage ids, idempotency keys, checked where they come in.

Every Redis key of a run is built as `<prefix>:run:<run id>:<part>`, so a run id that
holds a `:` (or a newline, or nothing) names another run's keys: `cancel "r1:states"`
would rewrite run r1's states hash. The CLI and `Client` refuse such ids before they
reach the store, with `InvalidId` (exit code 2, like an invalid pipeline).

The patterns are whole-string matches (`\\A...\\Z`, fullmatch): a trailing newline is refused.
"""

from __future__ import annotations

import re
from typing import Any

from orchestration.errors import InvalidId

__all__ = [
    "IDEMPOTENCY_KEY",
    "RUN_ID",
    "STAGE_ID",
    "InvalidId",
    "check_idempotency_key",
    "check_run_id",
    "check_stage_id",
]

RUN_ID = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\Z")
"""What `store.new_run_id()` makes ('r' + hex) and what any caller-chosen run id may be."""

STAGE_ID = re.compile(r"\A[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}\Z")
"""A stage id, as the pipeline file allows it (spec.Stage.id)."""

IDEMPOTENCY_KEY = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9_.:-]{0,255}\Z")
"""An idempotency key. ':' is allowed: the keys live under their own `<prefix>:idem:` and
reach nothing else, and the scheduler's keys are `schedule:<name>:<tick>`."""


_RULES = {
    "run id": (RUN_ID, 128, "letters, digits, '_', '.' or '-', starting with a letter or digit"),
    "stage id": (STAGE_ID, 128, "letters, digits, '_', '.' or '-', not starting with '.' or '-'"),
    "idempotency key": (
        IDEMPOTENCY_KEY,
        256,
        "letters, digits, '_', '.', ':' or '-', starting with a letter or digit",
    ),
}


def _check(kind: str, value: Any) -> str:
    pattern, limit, allowed = _RULES[kind]
    if isinstance(value, str) and pattern.fullmatch(value):
        return value
    raise InvalidId(
        f"{kind} {value!r} is not valid: {_why(kind, value, pattern, limit)} "
        f"(a {kind} is 1-{limit} {allowed})"
    )


def _why(kind: str, value: Any, pattern: re.Pattern[str], limit: int) -> str:
    if not isinstance(value, str):
        return f"it is {type(value).__name__}, not text"
    if not value:
        return "it is empty"
    if len(value) > limit:
        return f"it is {len(value)} characters long"
    first_ok = pattern.fullmatch(value[0]) is not None
    if not first_ok:
        return f"it starts with {value[0]!r}"
    for ch in value[1:]:
        if not pattern.fullmatch(value[0] + ch):
            return f"it contains {ch!r}"
    return "it does not match the allowed shape"  # pragma: no cover (every case is named above)


def check_run_id(value: Any) -> str:
    """`value` if it is a valid run id, else InvalidId saying what is wrong."""
    return _check("run id", value)


def check_stage_id(value: Any) -> str:
    """`value` if it is a valid stage id, else InvalidId saying what is wrong."""
    return _check("stage id", value)


def check_idempotency_key(value: Any) -> str:
    """`value` if it is a valid idempotency key, else InvalidId saying what is wrong."""
    return _check("idempotency key", value)


def is_stage_id(value: str) -> bool:
    return STAGE_ID.fullmatch(value) is not None


__all__ = [
    "IDEMPOTENCY_KEY",
    "RUN_ID",
    "STAGE_ID",
    "InvalidId",
    "check_idempotency_key",
    "check_run_id",
    "check_stage_id",
    "is_stage_id",
]
