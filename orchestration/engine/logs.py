"""The log streams of attempts: written live by workers, read by `chordflow logs` and the run page.

Each attempt of a stage (or of one fan-out item) that logs anything has its own Redis stream
(`keys.log_stream`): one entry per line, `t` (epoch s, the worker's clock), `lv` (the level:
DEBUG, INFO, WARNING, ERROR, CRITICAL for `ctx.log` and a Python stage's `logging` records;
STDOUT, STDERR for a stage's output, `print()` included) and `m` (the text). The worker sends
its lines in batches, one round trip per batch, from a background thread of the attempt
(workers/livelog.py); an attempt that logs nothing costs nothing. A stream keeps the last
`log_lines_cap` lines (XADD MAXLEN); the index of the stage (`keys.log_index`) counts every entry
sent and every line the worker dropped before sending, and names where the entries that are not
lines (markers, notes) were, so `sent` minus `attempt_log_lengths` is exactly how many lines were
not kept. Marker entries frame each run of the attempt: `BEGIN` (the first batch) and `END` (the
outcome, written before the attempt's commit); a failed attempt's last lines before its `END` are
its traceback's tail, ending with the error, at level `TRACEBACK`. A stream and the stage's index
expire `run_ttl_s` after the last batch written to them: they are not among the keys the run's end
expires (`keys.run_keys`), and `retry` leaves their TTL alone.

Before the streams, a worker kept a stage's output as one list (`keys.logs`): `legacy_logs` reads
it, so runs logged that way still show their lines (`append_logs` writes one, as such a worker did).

`AttemptLogs` is the run store's `logs` (`store.RunStore`): the store's client stays private.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from orchestration.engine.keys import Keys
from orchestration.settings import Settings

MARKERS = frozenset({"BEGIN", "END"})
FAILURE = "TRACEBACK"  # the level of the lines that end a failed attempt's log: its traceback's tail
EXACT_TRIM_BELOW = 1000  # `MAXLEN ~` trims by whole radix-tree nodes (100 entries): exact for small caps


@dataclass(frozen=True)
class LogLine:
    """One entry of an attempt's log stream."""

    id: str
    t: float
    level: str
    text: str

    @property
    def marker(self) -> bool:
        return self.level in MARKERS


@dataclass
class AttemptLogInfo:
    """What the index says of one attempt's log stream (a stage's or one item's)."""

    stage_id: str
    item: int | None
    attempt: int
    sent: int = 0  # entries ever added (lines and markers)
    first: float | None = None
    last: float | None = None
    ended: bool = False
    outcome: str | None = None
    host: str | None = None


def index_field(item: int | None, attempt: int) -> str:
    return f"{'' if item is None else item}:{attempt}"


def _parse_field(name: str) -> tuple[int | None, int] | None:
    item, _, attempt = name.partition(":")
    if not attempt.isdigit() or not (item == "" or item.isdigit()):
        return None
    return (int(item) if item else None), int(attempt)


def parse_index(stage_id: str, raw: Mapping[str, str]) -> list[AttemptLogInfo]:
    """The attempts of a stage's index hash, by item then attempt. Fields: '<item>:<attempt>' (JSON
    meta) and '<item>:<attempt>:n' (entries sent, a counter)."""
    found: dict[tuple[int | None, int], AttemptLogInfo] = {}
    for name, value in raw.items():
        head, _, tail = name.rpartition(":")
        counter = tail == "n"
        key = _parse_field(head if counter else name)
        if key is None:
            continue
        info = found.setdefault(key, AttemptLogInfo(stage_id, key[0], key[1]))
        if counter:
            info.sent = int(value)
            continue
        try:
            meta = json.loads(value)
        except ValueError:
            continue
        if isinstance(meta, dict):
            info.first, info.last = meta.get("first"), meta.get("last")
            info.ended, info.outcome, info.host = (
                bool(meta.get("ended")),
                meta.get("outcome"),
                meta.get("host"),
            )
    return sorted(found.values(), key=lambda i: (-1 if i.item is None else i.item, i.attempt))


def trimmed_marks(raw_meta: str | None, length: int) -> int:
    """How many of the entries that are not lines (markers, notes) a stream of `length` entries
    trimmed: its oldest ones go first, so those among the first `written - length` the worker sent,
    by the positions its meta names (`written`, `marks`, `marks_before`: workers/livelog.py)."""
    if not raw_meta:
        return 0
    try:
        meta = json.loads(raw_meta)
        trimmed = int(meta.get("written") or 0) - length
        marks = [int(m) for m in meta.get("marks") or ()]
        before = int(meta.get("marks_before") or 0)
    except (ValueError, TypeError, AttributeError):
        return 0
    if trimmed <= 0:
        return 0
    return before + sum(1 for m in marks if m < trimmed)


def _line(entry_id: str, fields: Mapping[str, str]) -> LogLine:
    try:
        t = float(fields.get("t", 0))
    except ValueError:
        t = 0.0
    return LogLine(entry_id, t, fields.get("lv", "INFO"), fields.get("m", ""))


class AttemptLogs:
    """The store's reads and writes of attempt logs (the run store's `logs`)."""

    def __init__(self, client: redis.Redis, settings: Settings, keys: Keys):
        self._r: Any = client
        self.settings = settings
        self.keys = keys

    # -- writing (a worker, from an attempt's log thread) -----------------------------------------
    def write_attempt_log(
        self,
        run_id: str,
        stage_id: str,
        item: int | None,
        attempt: int,
        entries: Sequence[tuple[float, str, str]],
        meta: Mapping[str, Any],
    ) -> None:
        """Append (time, level, text) entries to an attempt's stream and update its index entry: one
        round trip. The stream keeps its last `log_lines_cap` entries and expires `run_ttl_s` after
        this write."""
        cap = max(1, self.settings.log_lines_cap)
        ttl = max(1, int(self.settings.run_ttl_s))
        stream = self.keys.log_stream(run_id, stage_id, item, attempt)
        index = self.keys.log_index(run_id, stage_id)
        name = index_field(item, attempt)
        meta = dict(meta)
        dropped = int(meta.pop("dropped_now", 0) or 0)  # lines the worker dropped: counted, not sent
        pipe = self._r.pipeline(transaction=False)
        for t, level, text in entries:
            pipe.xadd(
                stream,
                {"t": f"{t:.3f}", "lv": level, "m": text},
                maxlen=cap,
                approximate=cap >= EXACT_TRIM_BELOW,
            )
        pipe.hset(index, name, json.dumps(dict(meta), separators=(",", ":")))
        pipe.hincrby(index, f"{name}:n", len(entries) + dropped)
        pipe.expire(stream, ttl)
        pipe.expire(index, ttl)
        pipe.execute()

    # -- reading ------------------------------------------------------------------------------------
    def attempt_log_index(self, run_id: str, stage_ids: Sequence[str]) -> dict[str, list[AttemptLogInfo]]:
        """Stage id -> the attempts of it that have a log stream; one round trip."""
        pipe = self._r.pipeline(transaction=False)
        for sid in stage_ids:
            pipe.hgetall(self.keys.log_index(run_id, sid))
        return {sid: parse_index(sid, raw or {}) for sid, raw in zip(stage_ids, pipe.execute())}

    def attempt_log(
        self,
        run_id: str,
        stage_id: str,
        item: int | None,
        attempt: int,
        after: str | None = None,
        count: int | None = None,
    ) -> list[LogLine]:
        """The entries of one attempt's stream, oldest first; only those after stream id `after`."""
        stream = self.keys.log_stream(run_id, stage_id, item, attempt)
        start = f"({after}" if after else "-"
        return [_line(eid, f) for eid, f in self._r.xrange(stream, start, "+", count=count)]

    def attempt_log_lengths(self, run_id: str, refs: Sequence[tuple[str, int | None, int]]) -> list[int]:
        """How many entries each (stage, item, attempt) stream holds now, counting as held the
        markers and notes it trimmed: `sent` minus this is exactly the lines not kept. One round trip."""
        pipe = self._r.pipeline(transaction=False)
        for sid, item, attempt in refs:
            pipe.xlen(self.keys.log_stream(run_id, sid, item, attempt))
            index = self.keys.log_index(run_id, sid)
            pipe.hget(index, index_field(item, attempt))
        replies = pipe.execute()
        out = []
        for length, raw in zip(replies[::2], replies[1::2]):
            out.append(int(length) + trimmed_marks(raw, int(length)))
        return out

    def wait_attempt_logs(
        self, run_id: str, after: Mapping[tuple[str, int | None, int], str], block_ms: int
    ) -> list[tuple[tuple[str, int | None, int], LogLine]]:
        """New entries of these streams (each after its stream id, '0-0' for all), waiting up to
        `block_ms` for one to come (0: not at all)."""
        if not after:
            return []
        names = {self.keys.log_stream(run_id, *ref): ref for ref in after}
        reply = self._r.xread({name: after[ref] for name, ref in names.items()}, block=block_ms or None)
        out = []
        for stream, entries in _pairs(reply):
            for eid, fields in entries:
                out.append((names[stream], _line(eid, fields)))
        return out

    def log_text(self, run_id: str, stage_id: str) -> list[str]:
        """Every line a stage logged, as text: what workers before the streams kept, then each
        attempt's lines (no markers, no traceback of a failure), attempt by attempt."""
        lines = list(self._r.lrange(self.keys.logs(run_id, stage_id), 0, -1))
        for info in self.attempt_log_index(run_id, [stage_id])[stage_id]:
            lines += [
                e.text
                for e in self.attempt_log(run_id, stage_id, info.item, info.attempt)
                if not e.marker and e.level != FAILURE
            ]
        return lines

    # -- a stage's list of lines (before the streams) ---------------------------------------------
    def append_logs(self, run_id: str, stage_id: str, lines: Sequence[str]) -> None:
        """Add captured output lines to a stage's log."""
        if lines:
            self._r.rpush(self.keys.logs(run_id, stage_id), *lines)

    def legacy_logs(self, run_id: str, stage_id: str) -> list[str]:
        """The lines a worker before the per-attempt streams stored for a stage (a list)."""
        return list(self._r.lrange(self.keys.logs(run_id, stage_id), 0, -1))


def _pairs(reply: Any) -> list[tuple[str, list[tuple[str, dict[str, str]]]]]:
    """XREAD's reply as [(stream, entries)], whichever shape (RESP2 list, RESP3 dict) it has."""
    if not reply:
        return []
    if isinstance(reply, dict):
        return [
            (stream, list(entries[0] if entries and isinstance(entries[0], list) else entries))
            for stream, entries in reply.items()
        ]
    return [(stream, list(entries)) for stream, entries in reply]
