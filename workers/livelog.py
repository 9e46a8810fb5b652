"""An attempt's log, sent to Redis while the stage runs (`ctx.log`, a shell stage's output).

Lines are buffered in memory and sent in batches by one background thread per attempt, every
`log_flush_s` (0.2 s) or as soon as `BATCH` lines wait: a line is readable by `chordflow logs`
well within a second, and a stage that logs a lot costs one round trip per batch, not per line.
The thread starts with the first line: an attempt that logs nothing sends nothing. Between two
batches at most `log_lines_cap` lines wait (the stream keeps no more anyway); older ones are
dropped and counted in one WARNING line. `close` sends what is left with an `END` marker before
the attempt commits, so whoever sees the stage end finds all of its lines.

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

log = logging.getLogger("chordflow.worker")

BATCH = 500  # lines that make the thread send at once, before its next tick
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
            entries += batch
            meta: dict[str, Any] = {"first": self.first, "last": self.last, "lines": self.total}
            if ending is not None:
                entries.append((now, "END", str(ending.get("outcome", ""))))
                meta.update(ending, ended=True)
                self._ended = True
            try:
                self._write(entries, meta)
            except Exception as exc:  # noqa: BLE001  logs never fail the stage
                self.failed_sends += 1
                if self.failed_sends == 1:
                    log.warning("could not send %d log line(s) to Redis: %s", len(entries), exc)

    def close(self, ending: Mapping[str, Any] | None = None, timeout_s: float = 5.0) -> None:
        """Stop the thread and send the rest with the END marker; once. Nothing is sent when nothing
        was logged (no round trip for a quiet attempt)."""
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


def last_ending() -> tuple[str, dict[str, Any] | None]:
    """How the last attempt run by this thread ended, and forget it: ('', None) if unknown."""
    value = getattr(_ending, "value", None) or ("", None)
    _ending.value = None
    return value
