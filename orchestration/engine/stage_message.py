"""The stage message: what every Celery message of a stage task carries, typed and parsed once.

A stage task's arguments are `(run_id, stage_id, attempt, item)`, or, for a chunk of a fan-out's
consecutive items, `(run_id, stage_id, 1, first_item, count)`. Everything else a stage needs
(its type, params, inputs) comes from the run's stored graph, never from the message.

`StageMessage.parse` is the one place that unpacks those arguments: the worker's task, the
unknown-task handler, the consumer's guard (which drops a malformed message before Celery builds
its request) and the delay and parked sets (`payload`/`from_payload`) all go through it. A
message it refuses raises `MalformedMessage`, which says what is wrong; callers log it and drop
the message, never let it reach Celery.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from orchestration.settings import FANOUT_CHUNK_MAX

#: What a stage id or run id may be at most, in a message (ids are far shorter: language/ids.py).
_ID_MAX = 512


class MalformedMessage(ValueError):
    """A stage message whose arguments are not `(run_id, stage_id, attempt, item[, count])`."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True, slots=True)
class StageMessage:
    """One attempt of one stage, or of one fan-out item, or of a chunk of `count` consecutive items
    starting at `item`."""

    run_id: str
    stage_id: str
    attempt: int = 1
    item: int | None = None
    count: int = 1

    @classmethod
    def parse(cls, args: Any, kwargs: Any = None) -> StageMessage:
        """The message of a task's `args` and `kwargs`, or MalformedMessage saying what is wrong."""
        if kwargs:
            raise MalformedMessage(f"a stage message has no keyword arguments (got {_short(kwargs)})")
        if not isinstance(args, Sequence) or isinstance(args, str | bytes):
            raise MalformedMessage(f"a stage message's arguments are a list (got {type(args).__name__})")
        if not 2 <= len(args) <= 5:
            raise MalformedMessage(f"a stage message has 2 to 5 arguments (got {len(args)})")
        run_id, stage_id, *rest = args
        attempt = rest[0] if len(rest) > 0 else 1
        item = rest[1] if len(rest) > 1 else None
        count = rest[2] if len(rest) > 2 else 1
        for name, value in (("run_id", run_id), ("stage_id", stage_id)):
            if not isinstance(value, str) or not value or len(value) > _ID_MAX:
                raise MalformedMessage(f"{name} must be a non-empty string (got {_short(value)})")
        if not _is_int(attempt) or attempt < 1:
            raise MalformedMessage(f"attempt must be an integer >= 1 (got {_short(attempt)})")
        if item is not None and (not _is_int(item) or item < 0):
            raise MalformedMessage(f"item must be null or an integer >= 0 (got {_short(item)})")
        if not _is_int(count) or count < 1 or count > FANOUT_CHUNK_MAX:
            raise MalformedMessage(
                f"count must be an integer from 1 to {FANOUT_CHUNK_MAX} (got {_short(count)})"
            )
        if count > 1 and (item is None or attempt != 1):
            raise MalformedMessage("a chunk of items (count > 1) starts at an item, at attempt 1")
        return cls(run_id, stage_id, attempt, item, count)

    @property
    def args(self) -> tuple[Any, ...]:
        """The task's arguments, as the worker receives them."""
        base = (self.run_id, self.stage_id, self.attempt, self.item)
        return base if self.count == 1 else (*base, self.count)

    @property
    def items(self) -> range:
        """The fan-out items this message runs (empty for a stage that does not fan out)."""
        return range(0) if self.item is None else range(self.item, self.item + self.count)

    def payload(self) -> str:
        """The JSON form kept by the delay set and the parked set (one attempt, never a chunk)."""
        return json.dumps([self.run_id, self.stage_id, self.attempt, self.item], separators=(",", ":"))

    @classmethod
    def from_payload(cls, text: str | bytes) -> StageMessage:
        """The message of a `payload()` text; MalformedMessage if it is not one."""
        try:
            args = json.loads(text)
        except (ValueError, TypeError) as exc:
            raise MalformedMessage(f"a stored stage message is not JSON: {exc}") from None
        return cls.parse(args)

    def one(self, item: int) -> StageMessage:
        """The message of one item of this chunk."""
        return StageMessage(self.run_id, self.stage_id, self.attempt, item)


def _short(value: Any) -> str:
    text = repr(value) if not isinstance(value, Mapping) else repr(dict(list(value.items())[:3]))
    return text if len(text) <= 80 else text[:77] + "..."


__all__ = ["MalformedMessage", "StageMessage"]
