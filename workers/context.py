"""What a stage function receives as `ctx`.

Context and metrics writes are buffered and committed with the attempt, in the
same script that records its output: a retried or duplicated attempt never
double-counts. Reads see what earlier stages committed, plus this attempt's
own writes.

Limits (worker settings, docs/security.md): one context value's JSON is at most
`context_value_cap_bytes`, and an attempt keeps at most `log_lines_cap` log
lines (the rest are counted, and one last line says how many were dropped).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping
from typing import Any, Self

from orchestration.engine.store import RunStore
from orchestration.errors import FailStage
from orchestration.settings import Settings


class ContextValueTooLarge(FailStage):
    """A stage set a shared context value larger than the worker's `context_value_cap_bytes`."""


def _settings(store: Any) -> Settings:
    settings = getattr(store, "settings", None)
    return settings if isinstance(settings, Settings) else Settings()


class SharedContext:
    def __init__(self, store: RunStore, run_id: str):
        self._store, self._run_id = store, run_id
        self._cap = _settings(store).context_value_cap_bytes
        self._local: dict[str, Any] = {}
        self._incr: dict[str, float] = {}
        self.writes: list[tuple[str, str, str]] = []

    def get(self, key: str, default: Any = None) -> Any:
        if key in self._local:
            return self._local[key]
        value = self._store.context_get(self._run_id, key)
        value = default if value is None else value
        if key in self._incr:
            value = (value or 0) + self._incr[key]
        return value

    def set(self, key: str, value: Any) -> None:
        encoded = json.dumps(value)  # fail here, in the stage, if it is not JSON
        size = len(encoded.encode("utf-8"))
        if size > self._cap:
            raise ContextValueTooLarge(
                f"context value {key!r} is {size:,} bytes of JSON, over this worker's cap of {self._cap:,} bytes "
                f"(context_value_cap_bytes): store the data elsewhere (a file, an object store) and set a "
                f"reference to it (a path or URL) instead"
            )
        self._local[key] = json.loads(encoded)
        self._incr.pop(key, None)
        self.writes.append(("s", key, encoded))

    def incr(self, key: str, amount: float = 1) -> float:
        """Add to a numeric value; returns the value as this attempt sees it."""
        self._incr[key] = self._incr.get(key, 0) + amount
        self.writes.append(("i", key, repr(float(amount))))
        if key in self._local:
            self._local[key] = (self._local[key] or 0) + amount
            return self._local[key]
        return self.get(key, 0)


class Metrics:
    def __init__(self) -> None:
        self.values: dict[str, float] = {}

    def add(self, name: str, value: float) -> None:
        self.values[name] = self.values.get(name, 0) + value

    def increment(self, name: str, value: float = 1) -> None:
        self.add(name, value)


class LogLines(list):
    """An attempt's log lines, at most `cap` of them; past that, one last line counts the rest.

    A plain list to its readers (the attempt's end stores it as is); `append` and `extend`
    keep the first `cap` lines and replace the rest by "… N more log lines not kept"."""

    def __init__(self, cap: int):
        super().__init__()
        self.cap = max(0, int(cap))
        self.dropped = 0

    def append(self, line: Any) -> None:
        if self.dropped == 0 and len(self) < self.cap:
            super().append(line)
            return
        self.dropped += 1
        note = (
            f"… {self.dropped:,} more log line{'s' if self.dropped != 1 else ''} not kept "
            f"(this worker keeps {self.cap:,} per attempt: log_lines_cap)"
        )
        if self.dropped == 1:
            super().append(note)
        else:
            self[-1] = note

    def extend(self, lines: Any) -> None:
        for line in lines:
            self.append(line)

    def __iadd__(self, lines: Any) -> Self:  # type: ignore[override,misc]
        self.extend(lines)
        return self


class StageLog(logging.LoggerAdapter):
    """A logger whose lines also go to the run's logs for `chordflow logs`."""

    def __init__(self, logger: logging.Logger, lines: list[str], prefix: str):
        super().__init__(logger, {})
        self._lines, self._prefix = lines, prefix

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        self._lines.append(str(msg))
        return f"{self._prefix} {msg}", kwargs


class StageContext:
    def __init__(
        self,
        store: RunStore,
        run_id: str,
        stage_id: str,
        attempt: int,
        inputs: Mapping[str, Any],
        variables: Mapping[str, Any],
        item: Any = None,
        item_index: int | None = None,
        matrix: Mapping[str, Any] | None = None,
        timeout_s: float | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        run: tuple[str, ...] | None = None,
    ):
        self.run_id, self.stage_id, self.attempt = run_id, stage_id, attempt
        self.inputs = dict(inputs)
        self.variables = dict(variables)
        self.item, self.item_index = item, item_index
        self.matrix = dict(matrix or {})
        self.timeout_s = timeout_s
        self.env, self.cwd, self.run = dict(env or {}), cwd, run
        self.settings = _settings(store)  # the worker's settings: its policy for built-ins and limits
        self.context = SharedContext(store, run_id)
        self.metrics = Metrics()
        self.log_lines: list[str] = LogLines(self.settings.log_lines_cap)
        self.log = StageLog(
            logging.getLogger(f"chordflow.stage.{stage_id}"), self.log_lines, f"[{run_id}/{stage_id}]"
        )
        self._cancelled = threading.Event()

    def cancelled(self) -> bool:
        """True once this attempt lost its lease or the run was cancelled: stop soon."""
        return self._cancelled.is_set()

    def cancel(self) -> None:
        self._cancelled.set()
