"""What a stage function receives as `ctx`.

Context and metrics writes are buffered and committed with the attempt, in the
same script that records its output: a retried or duplicated attempt never
double-counts. Reads see what earlier stages committed, plus this attempt's
own writes.

Log lines (`ctx.log`) go to the attempt's log stream while the stage runs
(livelog.py), formatted and with their level; so do the stage's `print()` and
`logging` records (stage_output.py). The worker's own log gets a copy of the first
`worker_log_lines_per_attempt` `ctx.log` lines of each attempt (as its level lets
through), each cut to `worker_log_line_bytes`.

Limits (worker settings, docs/security.md): one context value's JSON is at most
`context_value_cap_bytes`, and a context key or metric name at most
`context_key_cap_bytes` (UTF-8); values and metrics must be finite numbers (no NaN or
Infinity: they are not JSON); an attempt's log stream keeps its last `log_lines_cap`
lines, each cut to `log_line_bytes`.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import sys
import threading
import time
import traceback
from collections.abc import Mapping
from typing import Any

from orchestration.engine.store import RunStore
from orchestration.errors import FailStage
from orchestration.settings import Settings

from . import stage_output
from .livelog import AttemptLog, cut


class ContextValueTooLarge(FailStage):
    """A stage set a shared context value larger than the worker's `context_value_cap_bytes`."""


class InvalidContextWrite(FailStage):
    """A stage wrote a context value or metric that is not a finite number, or named it with a key
    that is not text or is longer than the worker's `context_key_cap_bytes`."""


def check_name(what: str, name: Any, cap: int) -> str:
    """`name` if it may name a context value or metric, else InvalidContextWrite saying why."""
    if not isinstance(name, str):
        raise InvalidContextWrite(f"a {what} is named by text, not {type(name).__name__}")
    size = len(name.encode("utf-8", "surrogatepass"))
    if size > cap:
        raise InvalidContextWrite(
            f"a {what} {name[:40]!r}… is named by {size:,} bytes, over this worker's cap of {cap:,} "
            f"(context_key_cap_bytes): use a short name"
        )
    return name


def check_number(what: str, name: str, value: Any) -> float:
    """`value` as a float if it is a finite number, else InvalidContextWrite."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidContextWrite(f"{what} {name!r}: {value!r} is not a number")
    number = float(value)
    if not math.isfinite(number):
        raise InvalidContextWrite(
            f"{what} {name!r}: {value!r} is not a finite number (NaN and Infinity are not JSON)"
        )
    return number


def _settings(store: Any) -> Settings:
    settings = getattr(store, "settings", None)
    return settings if isinstance(settings, Settings) else Settings()


class SharedContext:
    def __init__(self, store: RunStore, run_id: str):
        self._store, self._run_id = store, run_id
        self._cap = _settings(store).context_value_cap_bytes
        self._key_cap = _settings(store).context_key_cap_bytes
        self._local: dict[str, Any] = {}
        self._incr: dict[str, float] = {}
        self.writes: list[tuple[str, str, str]] = []

    def get(self, key: str, default: Any = None) -> Any:
        if key in self._local:
            return self._local[key]
        value = self._store.runs.context_get(self._run_id, key)
        value = default if value is None else value
        if key in self._incr:
            value = (value or 0) + self._incr[key]
        return value

    def set(self, key: str, value: Any) -> None:
        check_name("context value", key, self._key_cap)
        try:
            encoded = json.dumps(value, allow_nan=False)  # fail here, in the stage, if it is not JSON
        except ValueError as exc:  # NaN or Infinity somewhere in it
            raise InvalidContextWrite(
                f"context value {key!r} holds a number that is not finite (NaN or Infinity are not JSON): {exc}"
            ) from None
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
        check_name("context value", key, self._key_cap)
        check_number("context value", key, amount)  # amount stays as given (an int stays an int)
        if not math.isfinite(self._incr.get(key, 0) + amount):
            raise InvalidContextWrite(f"context value {key!r}: adding {amount!r} overflows to Infinity")
        self._incr[key] = self._incr.get(key, 0) + amount
        self.writes.append(("i", key, repr(float(amount))))
        if key in self._local:
            self._local[key] = (self._local[key] or 0) + amount
            return self._local[key]
        return self.get(key, 0)


class Metrics:
    def __init__(self, name_cap: int = 1024) -> None:
        self.values: dict[str, float] = {}
        self._name_cap = name_cap

    def add(self, name: str, value: float) -> None:
        """Add `value` (a finite number) to metric `name`; refused at once otherwise, as the commit
        would refuse it."""
        check_name("metric", name, self._name_cap)
        check_number("metric", name, value)
        total = self.values.get(name, 0) + value
        if not math.isfinite(total):
            raise InvalidContextWrite(f"metric {name!r}: adding {value!r} overflows to Infinity")
        self.values[name] = total

    def increment(self, name: str, value: float = 1) -> None:
        self.add(name, value)


def stage_logger(stage_id: str) -> logging.Logger:
    """`chordflow.stage.<stage id>`, a child of `chordflow.stage` that the logging module does not
    keep: `getLogger` would hold one logger per stage id for the life of the worker, and stage ids
    are as many as the pipelines make (a matrix over a run's variables makes new ones every run).
    Its records carry the stage's name; its level and handlers are `chordflow.stage`'s."""
    logger = logging.Logger(f"chordflow.stage.{stage_id}")  # noqa: LOG001 -- on purpose: not kept (above)
    logger.parent = logging.getLogger("chordflow.stage")
    return logger


class StageLog(logging.LoggerAdapter):
    """`ctx.log`: a logger whose lines also go to the attempt's log stream, formatted (`"%s items",
    n` is stored as `3 items`), with their level, at every level (the worker's own log shows what
    its log level lets through, each line prefixed with the run and stage)."""

    def __init__(
        self, logger: logging.Logger, sink: AttemptLog, prefix: str, copies: int = 200, copy_chars: int = 2048
    ):
        super().__init__(logger, {})
        self._sink, self._prefix = sink, prefix
        self._copies_left, self._copy_chars = copies, copy_chars
        self._copy_lock = threading.Lock()

    def log(self, level: int, msg: Any, *args: Any, **kwargs: Any) -> None:
        record = logging.LogRecord(self.logger.name, level, "", 0, msg, args, None)
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # arguments that do not fit the format: keep both
            message = f"{msg} {args!r}"
        text = message
        exc_info = kwargs.get("exc_info")
        if exc_info:
            if isinstance(exc_info, BaseException):
                exc_info = (type(exc_info), exc_info, exc_info.__traceback__)
            elif not isinstance(exc_info, tuple):
                exc_info = sys.exc_info()
            if exc_info[0] is not None:
                text += "\n" + "".join(traceback.format_exception(*exc_info)).rstrip()
        self._sink.add(text, logging.getLevelName(level))
        if self.isEnabledFor(level):
            # The worker's own log gets a bounded copy: the first lines of the attempt, each cut to
            # its end, its traceback in the text (cut too) rather than formatted by the handler.
            with self._copy_lock:
                self._copies_left -= 1
                left = self._copies_left
            if left >= 0:
                self.logger.log(level, "%s %s", self._prefix, cut(text, self._copy_chars), stacklevel=2)
            if left == 0:
                self.logger.log(
                    logging.WARNING,
                    "%s further log lines of this attempt are not copied to the worker log "
                    "(worker_log_lines_per_attempt); `chordflow logs` has them",
                    self._prefix,
                )


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
        self.gpus: list[str] = []  # the GPU devices given to this attempt (CUDA_VISIBLE_DEVICES)
        self.token = ""  # the attempt's fencing token (fence.epoch), once it began
        self.settings = _settings(store)  # the worker's settings: its policy for built-ins and limits
        self.context = SharedContext(store, run_id)
        self.metrics = Metrics(self.settings.context_key_cap_bytes)
        write = getattr(getattr(store, "logs", None), "write_attempt_log", None)
        self.log_sink = AttemptLog(
            functools.partial(write, run_id, stage_id, item_index, attempt) if callable(write) else None,
            cap=self.settings.log_lines_cap,
            line_chars=self.settings.log_line_bytes,
            flush_s=self.settings.log_flush_s,
            begin=f"attempt {attempt}",
        )
        self.log = StageLog(
            stage_logger(stage_id),
            self.log_sink,
            f"[{run_id}/{stage_id}]",
            copies=self.settings.worker_log_lines_per_attempt,
            copy_chars=self.settings.worker_log_line_bytes,
        )
        if callable(write):  # a worker's attempt: its print() and logging records go to its log
            stage_output.capture(self.log_sink)
        self._cancelled = threading.Event()
        self._store, self._progress_at = store, 0.0

    def progress(self, done: float, total: float) -> None:
        """Report how far the stage is: `done` of `total` (any unit). `status`, `follow`, `watch`
        and the run page show it as a bar, and the ETA counts the rest of this stage by it. Sent at
        most twice a second (and always when done reaches total); a fan-out item's is not kept."""
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (done, total)):
            raise TypeError(f"ctx.progress(done, total) takes numbers, not {done!r}, {total!r}")
        if not (math.isfinite(done) and math.isfinite(total) and total > 0 and 0 <= done):
            raise ValueError(f"ctx.progress({done!r}, {total!r}): needs 0 <= done and 0 < total, finite")
        now = time.monotonic()
        if self.item_index is not None or (now - self._progress_at < 0.5 and done < total):
            return
        self._progress_at = now
        report = getattr(getattr(self._store, "runs", None), "report_progress", None)
        if callable(report):
            report(self.run_id, self.stage_id, self.attempt, min(float(done), float(total)), float(total))

    @property
    def log_lines(self) -> list[str]:
        """The lines not sent yet (without a store: the attempt's last `log_lines_cap` lines)."""
        return self.log_sink.lines()

    def cancelled(self) -> bool:
        """True once this attempt lost its lease or the run was cancelled: stop soon."""
        return self._cancelled.is_set()

    def cancel(self) -> None:
        self._cancelled.set()
