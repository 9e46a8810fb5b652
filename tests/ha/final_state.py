"""The final state of the runs a failover test made, read once through the current primary.

Plain values only (no Redis objects), so the checker is a pure function of the recording and this.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field

import redis

from orchestration.engine.keys import Keys

from .history import text_hash, value_hash

RUN_FINAL = frozenset({"succeeded", "failed", "cancelled", "skipped"})


@dataclass(frozen=True)
class FinalUnit:
    state: str | None
    token: str | None
    attempt: int
    output_hash: str | None  # text_hash of the stored output text (an item's, or a stage's)
    since: float | None  # when it entered a waiting state (queued: its parents' end; retrying: due)


@dataclass
class FinalRun:
    status: str | None  # None: the run does not exist on the primary
    created_at: float = 0.0
    finished_at: float | None = None
    units: dict[tuple[str, int | None], FinalUnit] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)  # stage id -> value_hash of its output
    needs: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class FinalState:
    runs: dict[str, FinalRun]
    now: float  # the primary's clock when it was read


def _float(text: str | None) -> float | None:
    return None if text in (None, "") else float(text)


def read_run(r: redis.Redis, keys: Keys, run_id: str) -> FinalRun:
    record = r.hgetall(keys.run(run_id))
    if not record:
        return FinalRun(status=None)
    graph = json.loads(r.get(keys.graph(run_id)) or "{}")
    needs = {n["id"]: list(n.get("needs") or []) for n in graph.get("nodes", [])}
    states = r.hgetall(keys.states(run_id))
    raw_outputs = r.hgetall(keys.outputs(run_id))
    run = FinalRun(
        status=record.get("status"),
        created_at=float(record.get("created_at") or 0),
        finished_at=_float(record.get("finished_at")),
        outputs={sid: value_hash(json.loads(text)) for sid, text in raw_outputs.items()},
        needs=needs,
    )
    stage_hashes = {sid: r.hgetall(keys.stage(run_id, sid)) for sid in needs}
    for sid, parents in needs.items():
        s = stage_hashes[sid]
        ended = [_float(stage_hashes[p].get("finished_at")) for p in parents]
        queued_since = max([e for e in ended if e is not None], default=run.created_at)
        run.units[(sid, None)] = _unit(
            states.get(sid), s, "", raw_outputs.get(sid), queued_since, items_parent=False
        )
        items = r.hgetall(keys.items(run_id, sid))
        indexes = sorted({int(f.split(":", 1)[0]) for f in items if f.split(":", 1)[0].isdigit()})
        for i in indexes:
            run.units[(sid, i)] = _unit(
                items.get(f"{i}:state"),
                items,
                f"{i}:",
                items.get(f"{i}:output"),
                _float(s.get("started_at")) or queued_since,
                items_parent=True,
            )
    return run


def _unit(
    state: str | None,
    fields: dict[str, str],
    p: str,
    output_text: str | None,
    queued_since: float,
    items_parent: bool,
) -> FinalUnit:
    since = _float(fields.get(p + "retry_at")) if state == "retrying" else queued_since
    return FinalUnit(
        state=state,
        token=fields.get(p + "token"),
        attempt=int(fields.get(p + "attempt") or 0),
        output_hash=None if output_text is None else text_hash(output_text),
        since=since,
    )


def read_final_state(r: redis.Redis, prefix: str, run_ids: Iterable[str]) -> FinalState:
    """Every run in `run_ids`, as the primary `r` has it now (a client with decode_responses)."""
    keys = Keys(prefix)
    seconds, micros = r.time()
    return FinalState(
        runs={run_id: read_run(r, keys, run_id) for run_id in sorted(set(run_ids))},
        now=seconds + micros / 1e6,
    )
