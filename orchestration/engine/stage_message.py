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

from orchestration.errors import InvalidId
from orchestration.language.ids import check_run_id, check_stage_id
from orchestration.settings import FANOUT_CHUNK_MAX


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
        try:
            check_run_id(run_id)
            check_stage_id(stage_id)
        except InvalidId as exc:
            raise MalformedMessage(str(exc)) from None
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

    def args_json(self) -> str:
        """The task's arguments as the JSON text of a message body's first element."""
        return json.dumps(list(self.args), separators=(",", ":"))

    @staticmethod
    def template_json(run_id: str, stage_id: str, item_mark: str, count_mark: str | None) -> str:
        """The arguments of any item of a fan-out (attempt 1) with `item_mark` standing for the item's
        index and `count_mark` for a chunk's count (None: one item a message), for the scripts to
        fill in (engine/messages.py): the same layout as `args_json`."""
        head = json.dumps([run_id, stage_id, 1], separators=(",", ":"))[:-1]
        return f"{head},{item_mark}" + (f",{count_mark}]" if count_mark else "]")

    def one(self, item: int) -> StageMessage:
        """The message of one item of this chunk."""
        return StageMessage(self.run_id, self.stage_id, self.attempt, item)


def _short(value: Any) -> str:
    text = repr(value) if not isinstance(value, Mapping) else repr(dict(list(value.items())[:3]))
    return text if len(text) <= 80 else text[:77] + "..."


__all__ = ["MalformedMessage", "StageMessage"]
