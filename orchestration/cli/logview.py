"""`chordflow logs`: the attempts' log streams (engine/logs.py), printed or followed live.

Printed, each attempt that logged gets a header (stage, item, attempt, the round of `chordflow
retry` as `retry N`, host, how it ended) and its lines, `HH:MM:SS.mmm LEVEL text`. An attempt's
stream holds each time it ran, framed by BEGIN markers (a run retried runs attempt 1 again, a
lost worker's attempt is sent again): each of those runs gets its own header and round. A stage
that failed without a line shows its error and the tail of its traceback. Followed
(`--follow`), lines are printed as they arrive, until what is followed ends: one attempt
(`--attempt`), a stage (all its attempts and items, retries included), or the whole run.
`--json` prints one JSON object per line: `{"stage", "item", "attempt", "round", "t", "level",
"line"}`; the BEGIN/END markers are left out (their content is the header's, in `status`).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from orchestration.api import Client
from orchestration.cli._common import print_json_line, say
from orchestration.cli.runview import iso, read_history
from orchestration.engine.attempts import AttemptHistory, AttemptRecord, complete
from orchestration.engine.logs import MARKERS, AttemptLogInfo, LogLine
from orchestration.states import RUN_FINAL, TERMINAL, State

Ref = tuple[str, int | None, int]  # (stage, item, attempt)
POLL_MS = 250  # a follower waits this long for lines before it looks for new streams and the end
LEVEL_SHOWN = {"STDOUT": "out", "STDERR": "err", "WARNING": "WARN", "CRITICAL": "CRIT"}
TRACEBACK_LINES = 12  # of a failed stage's traceback, shown by `logs` when the stage logged nothing


def _wanted(info: AttemptLogInfo, item: int | None, attempt: int | None) -> bool:
    return (item is None or info.item == item) and (attempt is None or info.attempt == attempt)


def where(ref: Ref) -> str:
    stage, item, attempt = ref
    return f"{stage}{'' if item is None else f'[{item}]'}#{attempt}"


def line_text(entry: LogLine, prefix: str = "") -> str:
    stamp = datetime.fromtimestamp(entry.t).strftime("%H:%M:%S.%f")[:-3]
    level = LEVEL_SHOWN.get(entry.level, entry.level)
    return f"{prefix}{stamp} {level:<5} {entry.text}"


def line_json(ref: Ref, entry: LogLine, round_: int | None = None) -> dict[str, Any]:
    stage, item, attempt = ref
    return {
        "stage": stage,
        "item": item,
        "attempt": attempt,
        "round": round_,
        "t": iso(entry.t),
        "level": entry.level,
        "line": entry.text,
    }


def header(info: AttemptLogInfo, record: AttemptRecord | None) -> str:
    """`== build[3] · attempt 2 · retry 1 · on w0 · failed: RuntimeError: boom`; `record`: the
    attempt's record for this run of it (None when the events are gone)."""
    parts = [f"== {info.stage_id}{'' if info.item is None else f'[{info.item}]'}", f"attempt {info.attempt}"]
    if record is not None and record.round:
        parts.append(f"retry {record.round}")
    host = (record.host if record else None) or info.host
    if host:
        parts.append(f"on {host}")
    if record is not None:
        outcome = record.outcome
        if record.error:
            outcome += f": {record.error.get('type')}: {record.error.get('message', '')}"
        parts.append(outcome[:200])
    elif info.outcome:
        parts.append(info.outcome)
    return " · ".join(parts)


def runs_of(
    entries: list[LogLine], records: list[AttemptRecord]
) -> list[tuple[AttemptRecord | None, list[LogLine]]]:
    """An attempt's stream split at its BEGIN markers, each part with the record of that run of
    the attempt (its records in the order they started; the last one for parts beyond them)."""
    parts: list[list[LogLine]] = []
    for entry in entries:
        if entry.level == "BEGIN" or not parts:
            parts.append([])
        if entry.level not in MARKERS:
            parts[-1].append(entry)
    ordered = sorted(records, key=lambda r: (r.round, r.started_at or 0.0))
    return [(ordered[min(i, len(ordered) - 1)] if ordered else None, lines) for i, lines in enumerate(parts)]


def error_lines(record: AttemptRecord) -> list[str]:
    """A failed attempt's error and the last lines of its traceback, for a stage without lines."""
    error = record.error or {}
    lines = [f"{error.get('type') or 'error'}: {error.get('message', '')}".rstrip()]
    tail = [line for line in str(error.get("traceback") or "").splitlines() if line.strip()]
    return lines + [f"  {line}" for line in tail[-TRACEBACK_LINES:]]


def print_logs(
    client: Client,
    run_id: str,
    stage_ids: Sequence[str],
    item: int | None,
    attempt: int | None,
    as_json: bool,
    round_: int | None = None,
) -> int:
    """Print what the streams hold now, and the error of a failed stage that logged nothing;
    returns how many attempt runs' logs (or errors) were printed."""
    store = client.store
    history = read_history(client, run_id)
    index = store.logs.attempt_log_index(run_id, list(stage_ids))
    shown = 0
    for sid in stage_ids:
        legacy = (
            store.logs.legacy_logs(run_id, sid) if item is None and attempt is None and round_ is None else []
        )
        if legacy:
            shown += 1
            if not as_json:
                say(f"== {sid} (kept by a worker before live logs)")
            for text in legacy:
                if as_json:
                    where_ = {"stage": sid, "item": None, "attempt": None, "round": None, "t": None}
                    print_json_line({**where_, "level": "INFO", "line": text})
                else:
                    say(text)
        infos = [i for i in index[sid] if _wanted(i, item, attempt)]
        units = _units(
            client, run_id, sid, history, any(i.item is not None for i in infos) or item is not None
        )
        if not infos and not legacy:
            shown += _show_error(sid, units, item, attempt, round_, as_json)
            continue
        lengths = store.logs.attempt_log_lengths(run_id, [(i.stage_id, i.item, i.attempt) for i in infos])
        for info, length in zip(infos, lengths):
            ref: Ref = (info.stage_id, info.item, info.attempt)
            records = [r for r in units.get(info.item, []) if r.attempt == info.attempt]
            for number, (record, lines) in enumerate(
                runs_of(list(store.logs.attempt_log(run_id, *ref)), records)
            ):
                if round_ is not None and (record.round if record else 0) != round_:
                    continue
                shown += 1
                if as_json:
                    for entry in lines:
                        print_json_line(line_json(ref, entry, record.round if record else None))
                    continue
                say(header(info, record))
                if number == 0 and info.sent > length:
                    say(f"… {info.sent - length:,} earlier lines not kept (log_lines_cap)")
                for entry in lines:
                    say(line_text(entry))
    return shown


def _show_error(
    stage_id: str,
    units: dict[int | None, list[AttemptRecord]],
    item: int | None,
    attempt: int | None,
    round_: int | None,
    as_json: bool,
) -> int:
    """Print the error of each failed attempt of `stage_id` (that logged nothing); how many."""
    shown = 0
    for unit, records in units.items():
        if item is not None and unit != item:
            continue
        for record in records:
            if not record.error or (attempt is not None and record.attempt != attempt):
                continue
            if round_ is not None and record.round != round_:
                continue
            shown += 1
            lines = error_lines(record)
            if as_json:
                for text in lines:
                    entry = LogLine("", record.finished_at or 0.0, "ERROR", text)
                    print_json_line(line_json((stage_id, unit, record.attempt), entry, record.round))
                continue
            info = AttemptLogInfo(stage_id, unit, record.attempt, host=record.host)
            say(header(info, record) + " · no log lines; its error:")
            for text in lines:
                say(f"  {text}")
    return shown


def _units(
    client: Client, run_id: str, stage_id: str, history: AttemptHistory, items: bool
) -> dict[int | None, list[AttemptRecord]]:
    """The attempts of a stage (key None) and of its items, with the error their records keep."""
    detail = client.store.runs.stage_details(run_id, [stage_id])[stage_id]
    units: dict[int | None, list[AttemptRecord]] = {
        None: complete(history.of(stage_id), stage_id, None, detail.get("state", ""), detail)
    }
    if items:
        for index, record in client.store.runs.items(run_id, stage_id).items():
            units[index] = complete(
                history.of(stage_id, index), stage_id, index, record.get("state", ""), record
            )
    return units


def follow_logs(
    client: Client,
    run_id: str,
    stage_ids: Sequence[str],
    stage: str | None,
    item: int | None,
    attempt: int | None,
    as_json: bool,
) -> None:
    """Print lines as they arrive until what is followed ends (see the module docstring)."""
    store = client.store
    positions: dict[Ref, str] = {}
    # one stage (or one item): a header when its attempt changes; several: each line says whose
    several = stage is None or (item is None and store.runs.graph(run_id).node(stage).fans_out)
    shown: list[Ref] = []

    def discover() -> None:
        for infos in store.logs.attempt_log_index(run_id, list(stage_ids)).values():
            for info in infos:
                if _wanted(info, item, attempt):
                    positions.setdefault((info.stage_id, info.item, info.attempt), "0-0")

    def show(batch: list[tuple[Ref, LogLine]]) -> None:
        for ref, entry in batch:
            positions[ref] = entry.id
            if entry.level in MARKERS:
                continue  # a run of the attempt began or ended: the header says which
            if as_json:
                print_json_line(line_json(ref, entry))
            else:
                if not several and shown[-1:] != [ref]:
                    shown.append(ref)
                    say(f"== {where(ref).replace('#', ' · attempt ')}")
                say(line_text(entry, f"{where(ref)} | " if several else ""))
        sys.stdout.flush()

    while True:
        discover()
        ended = _ended(client, run_id, stage, item, attempt)
        if positions:
            show(store.logs.wait_attempt_logs(run_id, positions, block_ms=0 if ended else POLL_MS))
        elif not ended:
            time.sleep(POLL_MS / 1000)
        if ended:
            discover()  # the last lines: sent before the commit that ended it
            if positions:
                show(store.logs.wait_attempt_logs(run_id, positions, block_ms=0))
            return


def _ended(client: Client, run_id: str, stage: str | None, item: int | None, attempt: int | None) -> bool:
    """Whether the followed attempt, stage or run has ended."""
    store = client.store
    if store.runs.run_status(run_id) in RUN_FINAL:
        return True
    if stage is None:
        return False
    if attempt is None and item is None:
        return store.runs.stage_state(run_id, stage) in TERMINAL
    state, _, current = store.transitions.lease_state(run_id, stage, item)
    if attempt is None:  # one item, all its attempts
        return state in TERMINAL
    if store.runs.stage_state(run_id, stage) in TERMINAL and state != State.RUNNING:
        return True
    return current > attempt or (
        current == attempt and state not in (State.RUNNING, State.QUEUED, State.PENDING, None)
    )
