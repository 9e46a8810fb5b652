"""An attempt's log, sent to Redis while the stage runs (`ctx.log`, a shell stage's output).

Lines are buffered in memory and sent in batches by one background thread per attempt, every
`log_flush_s` (0.2 s) or as soon as `BATCH` lines wait: a line is readable by `chordflow logs`
well within a second, and a stage that logs a lot costs one round trip per batch, not per line.
The thread starts with the first line: an attempt that logs nothing sends nothing. Between two
batches at most `log_lines_cap` lines wait (the stream keeps no more anyway); older ones are
dropped and counted in one WARNING line. `close` sends what is left with an `END` marker before
the attempt commits, so whoever sees the stage end finds all of its lines; a failed attempt's log
ends with its error and the tail of its traceback, just before that marker.

Counting, so that `chordflow logs` can say exactly how many lines were not kept: the index counter
(`engine/logs.py`) counts every entry sent plus every line dropped here; each batch's meta names the
positions of the entries that are not lines (BEGIN, END, the drop notes: `marks`), which the stream
may trim too. Positions are counted by this writer: exact while one worker writes the attempt's
stream (a second round of it, after its worker was lost, starts its own count).

`print()` and `logging` records of a Python stage come here too, while the attempt runs
(stage_output.py, `write_text`), as a shell stage's output does.

Sending never fails the stage: a batch Redis refuses is dropped with one warning in the worker
log (the attempt's outcome does not depend on its logs).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from orchestration.engine.logs import FAILURE

log = logging.getLogger("chordflow.worker")

BATCH = 500  # lines that make the thread send at once, before its next tick
MARKS_KEPT = 8  # positions of marks kept in the meta; older ones lie beyond any kept stream
TAIL_LINES = 60  # lines of a failed attempt's traceback added to its log
Entry = tuple[float, str, str]  # (epoch s, level, text)
Writer = Callable[[list[Entry], Mapping[str, Any]], None]


def cut(text: str, limit: int) -> str:
    """`text`, or its last `limit` characters marked "…" when it is longer."""
    if limit <= 0 or len(text) <= limit:
        return text
    return "…" + text[-(limit - 1) :] if limit > 1 else "…"


class AttemptLog:
    """The log of one attempt: `add` lines from any thread; `close` once, at the attempt's end.

    `write(entries, meta)` sends a batch (the store's `write_attempt_log`, bound to the attempt).
    Without a writer (a StageContext built without a store, in unit tests) the last `cap` lines
    stay in memory, in `lines()`."""

    def __init__(
        self,
        write: Writer | None,
        cap: int = 10_000,
        line_chars: int = 16 * 1024,
        flush_s: float = 0.2,
        begin: str = "",
    ):
        self._write = write
        self.cap, self.line_chars, self.flush_s, self._begin = (
            max(1, cap),
            line_chars,
            max(0.01, flush_s),
            begin,
        )
        self._pending: deque[Entry] = deque()
        self._lock = threading.RLock()  # re-entered by a SIGTERM handler that flushes (builtins.shell)
        self._send_lock = threading.RLock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._begun = False
        self._ended = False
        self.total = 0  # lines added
        self.dropped = 0  # lines dropped before they were sent (over the cap between two batches)
        self._unreported = 0
        self.first: float | None = None
        self.last: float | None = None
        self.failed_sends = 0
        self.written = 0  # entries this writer sent to the stream
        self._marks: list[int] = []  # positions (in what this writer sent) of entries that are not lines
        self._marks_before = 0  # marks older than those kept in _marks
        self._partial: dict[str, str] = {}  # level -> text written (print) after its last newline

    # -- adding lines (any thread) ----------------------------------------------------------------
    def add(self, text: str, level: str = "INFO", t: float | None = None) -> None:
        self.add_many((text,), level, t)

    def add_many(self, texts: Iterable[str], level: str, t: float | None = None) -> None:
        """Add lines of one level (a shell chunk's lines at once: one lock, one wake-up)."""
        stamp = time.time() if t is None else t
        entries = [(stamp, level, cut(str(text), self.line_chars)) for text in texts]
        if not entries:
            return
        start = False
        with self._lock:
            if self._closed:  # a thread of the stage that outlived it: too late to send
                self.dropped += len(entries)
                return
            self.total += len(entries)
            self.first = self.first if self.first is not None else stamp
            self.last = stamp
            self._pending.extend(entries)
            over = len(self._pending) - self.cap
            if over > 0:
                for _ in range(over):
                    self._pending.popleft()
                self.dropped += over
                self._unreported += over
            if self._write is not None and self._thread is None:
                self._thread = threading.Thread(target=self._loop, daemon=True, name="chordflow-log")
                start = True
            full = len(self._pending) >= BATCH
        if start:
            assert self._thread is not None
            self._thread.start()
        if full:
            self._wake.set()

    def write_text(self, level: str, text: str) -> None:
        """Text written to a stream (`print`, sys.stderr) while the stage runs: each complete line is
        a log line of `level` (STDOUT, STDERR); the rest waits for its newline (or `close`), its
        last `line_chars` characters only (a longer line is cut to its end anyway)."""
        if not text:
            return
        with self._lock:
            pending = self._partial.get(level, "") + text
            *complete, rest = pending.split("\n")
            self._partial[level] = rest[-self.line_chars :] if self.line_chars > 0 else rest
        if complete:
            self.add_many(complete, level)

    def skip(self, count: int) -> None:
        """Count lines dropped before they were added (a chunk of output over the cap)."""
        with self._lock:
            self.total += count
            self.dropped += count
            self._unreported += count

    def lines(self) -> list[str]:
        """The lines waiting to be sent (without a writer: the last `cap` lines of the attempt)."""
        with self._lock:
            return [text for _, _, text in self._pending]

    @property
    def started(self) -> bool:
        """Whether anything was logged (and so a stream exists, or will)."""
        return self._thread is not None

    # -- sending ---------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            self._wake.wait(self.flush_s)
            self._wake.clear()
            if self._closed:
                return
            self.flush()

    def flush(self, ending: Mapping[str, Any] | None = None) -> None:
        """Send what waits (and, given `ending`, the END marker and the outcome)."""
        if self._write is None:
            return
        with self._send_lock:
            with self._lock:
                batch = list(self._pending)
                self._pending.clear()
                unreported, self._unreported = self._unreported, 0
            if not batch and ending is None:
                return
            now = time.time()
            entries: list[Entry] = []
            if not self._begun:
                entries.append((batch[0][0] if batch else now, "BEGIN", self._begin))
                self._begun = True
            if unreported:
                note = (
                    f"… {unreported:,} log line{'s' if unreported != 1 else ''} dropped: more than "
                    f"{self.cap:,} came between two sends (log_lines_cap)"
                )
                entries.append((batch[0][0] if batch else now, "WARNING", note))
            marks = [self.written + i for i in range(len(entries))]  # so far: BEGIN and the note
            entries += batch
            meta: dict[str, Any] = {"first": self.first, "last": self.last, "lines": self.total}
            if ending is not None:
                marks.append(self.written + len(entries))
                entries.append((now, "END", str(ending.get("outcome", ""))))
                meta.update(
                    {k: v for k, v in ending.items() if isinstance(v, str | int | float | bool)}, ended=True
                )
                self._ended = True
            all_marks = self._marks + marks
            kept = all_marks[-MARKS_KEPT:]
            meta.update(
                marks=kept,
                marks_before=self._marks_before + len(all_marks) - len(kept),
                dropped_now=unreported,  # lines dropped since the last batch: counted, not stored
                written=self.written + len(entries),
            )
            try:
                self._write(entries, meta)
            except Exception as exc:  # noqa: BLE001  logs never fail the stage
                self.failed_sends += 1
                if self.failed_sends == 1:
                    log.warning("could not send %d log line(s) to Redis: %s", len(entries), exc)
                return
            self.written += len(entries)
            self._marks, self._marks_before = kept, int(meta["marks_before"])

    def close(self, ending: Mapping[str, Any] | None = None, timeout_s: float = 5.0) -> None:
        """Stop the thread and send the rest with the END marker; once. A failed attempt's error and
        traceback tail come last (from `ending["error"]` when it is the error record, else from what
        the attempt remembered, `remember_ending`). Nothing is sent when nothing was logged and
        nothing failed (no round trip for a quiet attempt)."""
        deactivate(self)
        with self._lock:
            if self._closed:
                return
            partial, self._partial = self._partial, {}
        for level, text in partial.items():
            if text:
                self.add(text, level)
        tail = error_tail(ending)
        if tail:
            self.add_many(tail, FAILURE)
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
        if thread is None:
            return
        self._wake.set()
        thread.join(timeout_s)
        if not self._ended:
            self.flush(ending if ending is not None else {"outcome": ""})

    def flush_soon(self, timeout_s: float = 1.0) -> None:
        """Send what waits, giving up after `timeout_s` (a process about to be killed)."""
        if self._thread is None:
            return
        sender = threading.Thread(target=self.flush, daemon=True, name="chordflow-log-last")
        sender.start()
        sender.join(timeout_s)


_ending = threading.local()


def remember_ending(outcome: str, error: Mapping[str, Any] | None) -> None:
    """Keep how this thread's attempt ended (its outcome and error), for the task's state (outcome.py)."""
    _ending.value = (outcome, dict(error) if error else None)


def error_tail(ending: Mapping[str, Any] | None) -> list[str]:
    """The lines that end a failed attempt's log: its traceback's last TAIL_LINES lines (they end
    with the error), or the error's text when there is none; nothing for an ending with no error.
    `ending["error"]` is the error record, or its text: then the record the attempt remembered
    (`remember_ending`, just before it closed its log) is read for the traceback."""
    error: Any = (ending or {}).get("error")
    if not error:
        return []
    if not isinstance(error, Mapping):
        remembered = getattr(_ending, "value", None)
        if remembered and remembered[1] and remembered[0] == (ending or {}).get("outcome"):
            error = remembered[1]
    if not isinstance(error, Mapping):
        return [str(error)]
    lines = str(error.get("traceback") or "").rstrip().splitlines()
    if not lines:
        return [f"{error.get('type')}: {error.get('message', '')}"]
    return (["… (the traceback's end)"] if len(lines) > TAIL_LINES else []) + lines[-TAIL_LINES:]


# The attempt whose stage runs in each thread (stage_output.py routes print() and logging there).
_active: dict[int, AttemptLog] = {}


def activate(sink: AttemptLog) -> None:
    """`sink` is the log of the attempt this thread runs now."""
    _active[threading.get_ident()] = sink


def deactivate(sink: AttemptLog) -> None:
    """`sink`'s attempt has ended: output is no longer routed to it (from any thread)."""
    for ident, active in list(_active.items()):
        if active is sink:
            _active.pop(ident, None)


def current() -> AttemptLog | None:
    """The log of the attempt running in this thread; in a thread a stage started (no attempt of its
    own), the one attempt running in this process, if there is exactly one."""
    sink = _active.get(threading.get_ident())
    if sink is None and len(_active) == 1:
        sink = next(iter(_active.values()), None)
    return sink


def last_ending() -> tuple[str, dict[str, Any] | None]:
    """How the last attempt run by this thread ended, and forget it: ('', None) if unknown."""
    value = getattr(_ending, "value", None) or ("", None)
    _ending.value = None
    return value
