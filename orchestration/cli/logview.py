"""`chordflow logs`: the attempts' log streams (engine/logs.py), printed or followed live.

Printed, each attempt that logged gets a header (stage, item, attempt, host, how it ended)
and its lines, `HH:MM:SS.mmm LEVEL text`. Followed (`--follow`), lines are printed as they
arrive, until what is followed ends: one attempt (`--attempt`), a stage (all its attempts and
items, retries included), or the whole run. `--json` prints one JSON object per line:
`{"stage", "item", "attempt", "t", "level", "line"}` (markers: level BEGIN or END).
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
from orchestration.engine.logs import AttemptLogInfo, LogLine
from orchestration.engine.states import RUN_FINAL, TERMINAL, State

Ref = tuple[str, int | None, int]  # (stage, item, attempt)
POLL_MS = 250  # a follower waits this long for lines before it looks for new streams and the end
LEVEL_SHOWN = {"STDOUT": "out", "STDERR": "err", "WARNING": "WARN", "CRITICAL": "CRIT"}


def _wanted(info: AttemptLogInfo, item: int | None, attempt: int | None) -> bool:
    return (item is None or info.item == item) and (attempt is None or info.attempt == attempt)


def where(ref: Ref) -> str:
    stage, item, attempt = ref
    return f"{stage}{'' if item is None else f'[{item}]'}#{attempt}"


def line_text(entry: LogLine, prefix: str = "") -> str:
    stamp = datetime.fromtimestamp(entry.t).strftime("%H:%M:%S.%f")[:-3]
    level = LEVEL_SHOWN.get(entry.level, entry.level)
    return f"{prefix}{stamp} {level:<5} {entry.text}"


def line_json(ref: Ref, entry: LogLine) -> dict[str, Any]:
    stage, item, attempt = ref
    return {
        "stage": stage,
        "item": item,
        "attempt": attempt,
        "t": iso(entry.t),
        "level": entry.level,
        "line": entry.text,
    }


def header(info: AttemptLogInfo, attempts: list[AttemptRecord]) -> str:
    """`== build[3] · attempt 2 · on w0 · failed: RuntimeError: boom` (`attempts`: the unit's)."""
    records = [r for r in attempts if r.attempt == info.attempt]
    parts = [f"== {info.stage_id}{'' if info.item is None else f'[{info.item}]'}", f"attempt {info.attempt}"]
    record = records[-1] if records else None
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
    if len(records) > 1:
        parts.append(f"run {len(records)} times")
    return " · ".join(parts)


def print_logs(
    client: Client,
    run_id: str,
    stage_ids: Sequence[str],
    item: int | None,
    attempt: int | None,
    as_json: bool,
) -> int:
    """Print what the streams hold now; returns how many attempts' logs were printed."""
    store = client.store
    history = read_history(client, run_id)
    index = store.attempt_log_index(run_id, list(stage_ids))
    shown = 0
    for sid in stage_ids:
        legacy = store.legacy_logs(run_id, sid) if item is None and attempt is None else []
        if legacy:
            shown += 1
            if not as_json:
                say(f"== {sid} (kept by a worker before live logs)")
            for text in legacy:
                if as_json:
                    print_json_line(
                        {
                            "stage": sid,
                            "item": None,
                            "attempt": None,
                            "t": None,
                            "level": "INFO",
                            "line": text,
                        }
                    )
                else:
                    say(text)
        infos = [i for i in index[sid] if _wanted(i, item, attempt)]
        if not infos:
            continue
        lengths = store.attempt_log_lengths(run_id, [(i.stage_id, i.item, i.attempt) for i in infos])
        units = _units(client, run_id, sid, history, any(i.item is not None for i in infos))
        for info, length in zip(infos, lengths):
            shown += 1
            ref: Ref = (info.stage_id, info.item, info.attempt)
            if not as_json:
                say(header(info, units.get(info.item, [])))
                if info.sent > length:
                    say(f"… {info.sent - length:,} earlier lines not kept (log_lines_cap)")
            first = True
            for entry in store.attempt_log(run_id, *ref):
                if as_json:
                    print_json_line(line_json(ref, entry))
                elif entry.level == "BEGIN":
                    if not first:
                        say(
                            f"-- attempt {info.attempt} started again ({entry.text}; its worker was lost, or the run was retried)"
                        )
                elif entry.level != "END":
                    say(line_text(entry))
                first = False
    return shown


def _units(
    client: Client, run_id: str, stage_id: str, history: AttemptHistory, items: bool
) -> dict[int | None, list[AttemptRecord]]:
    """The attempts of a stage (key None) and of its items, with the error their records keep."""
    detail = client.store.stage_details(run_id, [stage_id])[stage_id]
    units: dict[int | None, list[AttemptRecord]] = {
        None: complete(history.of(stage_id), stage_id, None, detail.get("state", ""), detail)
    }
    if items:
        for index, record in client.store.items(run_id, stage_id).items():
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
    several = stage is None or (item is None and store.graph(run_id).node(stage).fans_out)
    shown: list[Ref] = []

    def discover() -> None:
        for infos in store.attempt_log_index(run_id, list(stage_ids)).values():
            for info in infos:
                if _wanted(info, item, attempt):
                    positions.setdefault((info.stage_id, info.item, info.attempt), "0-0")

    def show(batch: list[tuple[Ref, LogLine]]) -> None:
        for ref, entry in batch:
            positions[ref] = entry.id
            if as_json:
                print_json_line(line_json(ref, entry))
            elif entry.level not in ("BEGIN", "END"):
                if not several and shown[-1:] != [ref]:
                    shown.append(ref)
                    say(f"== {where(ref).replace('#', ' · attempt ')}")
                say(line_text(entry, f"{where(ref)} | " if several else ""))
        sys.stdout.flush()

    while True:
        discover()
        ended = _ended(client, run_id, stage, item, attempt)
        if positions:
            show(store.wait_attempt_logs(run_id, positions, block_ms=0 if ended else POLL_MS))
        elif not ended:
            time.sleep(POLL_MS / 1000)
        if ended:
            discover()  # the last lines: sent before the commit that ended it
            if positions:
                show(store.wait_attempt_logs(run_id, positions, block_ms=0))
            return


def _ended(client: Client, run_id: str, stage: str | None, item: int | None, attempt: int | None) -> bool:
    """Whether the followed attempt, stage or run has ended."""
    store = client.store
    if store.run_status(run_id) in RUN_FINAL:
        return True
    if stage is None:
        return False
    if attempt is None and item is None:
        return store.stage_state(run_id, stage) in TERMINAL
    state, _, current = store.lease_state(run_id, stage, item)
    if attempt is None:  # one item, all its attempts
        return state in TERMINAL
    if store.stage_state(run_id, stage) in TERMINAL and state != State.RUNNING:
        return True
    return current > attempt or (
        current == attempt and state not in (State.RUNNING, State.QUEUED, State.PENDING, None)
    )
