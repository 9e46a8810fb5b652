"""A Python stage's `print()` and `logging` records go to its attempt's live log stream, as a shell
stage's output does (livelog.py), not to the worker's own log.

`capture(sink)` makes `sink` the log of the attempt this thread runs (`livelog.activate`; its
`close` ends that) and, once per process, puts two things in place:

- `sys.stdout` and `sys.stderr` become `StageStream`s: text written while an attempt runs (in its
  thread, or in a thread it started while it is the process's only attempt) becomes lines of level
  STDOUT or STDERR of that attempt; any other text goes where it went before (in a Celery pool
  process, Celery's redirection to the worker log).
- a `StageRecords` handler on the root logger adds each record emitted while an attempt runs to
  that attempt's log, with its level (Chordflow's, Celery's and kombu's own records excepted:
  `ctx.log` already writes its lines there). The records still reach the worker's other handlers
  as its logging configuration says.

What comes here is bounded like every attempt log line: `log_lines_cap` lines, `log_line_bytes` each.
"""

from __future__ import annotations

import io
import logging
import sys
import traceback
from typing import Any, TextIO

from .livelog import AttemptLog, activate, current

OWN_LOGGERS = ("chordflow", "celery", "kombu", "amqp", "billiard")  # not the stage's records


class StageStream(io.TextIOBase):
    """`sys.stdout`/`sys.stderr` while a worker runs stages (see the module docstring)."""

    def __init__(self, fallback: TextIO, level: str):
        super().__init__()
        self.fallback, self.level = fallback, level

    def write(self, text: str) -> int:
        sink = current()
        if sink is None:
            return self.fallback.write(text)
        sink.write_text(self.level, str(text))
        return len(text)

    def flush(self) -> None:
        if current() is None:
            self.fallback.flush()

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self.fallback.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.fallback, "encoding", None) or "utf-8"

    def __getattr__(self, name: str) -> Any:
        return getattr(self.fallback, name)


class StageRecords(logging.Handler):
    """Adds the stage's logging records to its attempt's log (see the module docstring)."""

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.split(".")[0] in OWN_LOGGERS:
            return
        sink = current()
        if sink is None:
            return
        try:
            text = record.getMessage()
        except (TypeError, ValueError):
            text = f"{record.msg} {record.args!r}"
        if record.exc_info and record.exc_info[0] is not None:
            text += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip()
        sink.add(text, record.levelname)


_installed = False


def install() -> None:
    """Route this process's stdout, stderr and logging records to the running attempt (once)."""
    global _installed
    if _installed:
        return
    _installed = True
    if not isinstance(sys.stdout, StageStream):
        sys.stdout = StageStream(sys.stdout, "STDOUT")
    if not isinstance(sys.stderr, StageStream):
        sys.stderr = StageStream(sys.stderr, "STDERR")
    logging.getLogger().addHandler(StageRecords())


def capture(sink: AttemptLog) -> None:
    """From now until `sink` closes, this thread's output and records are `sink`'s lines."""
    install()
    activate(sink)
