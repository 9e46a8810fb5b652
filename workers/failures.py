"""What an attempt's failure is recorded as, whatever the stage raised: `error_record` (type,
message, traceback tail; `<unprintable X>` for an exception whose own `__str__` raises), and the
two questions the attempt asks of a failure: is Redis refusing writes (`refused_write`), and is this
pool process being ended by its own pool (`terminating`: then it is not the stage's failure)."""

from __future__ import annotations

import traceback
from typing import Any

import redis
from billiard import common as billiard_common

from orchestration.errors import StageTimeout

TRACEBACK_TAIL = 2000


def terminating() -> bool:
    """This pool process was told to end (billiard's SIGTERM handler fired: a revoke with terminate,
    a cold shutdown): its SystemExit is the process's end, left to the lease, not the stage's failure."""
    fired = getattr(billiard_common, "terminate_handler_fired", None)
    return bool(fired and fired())


def safe_text(exc: BaseException) -> str:
    """`str(exc)`, or `<unprintable X>` when the exception's own `__str__` raises."""
    try:
        return str(exc)
    except BaseException:  # noqa: BLE001  a stage's exception may do anything in __str__
        return f"<unprintable {type(exc).__name__}>"


def _traceback(exc: BaseException) -> str:
    try:
        return "".join(traceback.format_exception(exc))[-TRACEBACK_TAIL:]
    except BaseException:  # noqa: BLE001  formatting calls the exception's __str__ too
        return "".join(traceback.format_tb(exc.__traceback__))[-TRACEBACK_TAIL:] + safe_text(exc)


def error_record(exc: BaseException, attempt: int, retryable: bool) -> dict[str, Any]:
    record: dict[str, Any] = {
        "type": type(exc).__name__,
        "message": safe_text(exc)[:2000],
        "retryable": retryable,
        "attempt": attempt,
        "traceback": _traceback(exc),
    }
    if isinstance(exc, StageTimeout):
        record.update(timeout=True, exit_code=exc.returncode)
    elif (code := getattr(exc, "returncode", None)) is not None:
        record["exit_code"] = code
    return record


def refused_write(exc: redis.RedisError) -> bool:
    """Redis answered but will not write: out of memory, or a read-only replica."""
    return isinstance(exc, (redis.exceptions.OutOfMemoryError, redis.exceptions.ReadOnlyError)) or (
        isinstance(exc, redis.ResponseError)
        and any(word in str(exc) for word in ("OOM", "maxmemory", "READONLY", "read only replica"))
    )


__all__ = ["TRACEBACK_TAIL", "error_record", "refused_write", "safe_text", "terminating"]
