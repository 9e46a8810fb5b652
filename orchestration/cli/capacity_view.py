"""Capacity and fleet-wide limits as the command line and the run page show them.

- A stage waiting for a slot or for room on a worker stays `queued` in the store, with a `waiting`
  label in its record (`pool llm 4/4`, `capacity gpu: needs 2 GPU ...`): `status`, the live table
  and the run page show it as `waiting (pool llm 4/4)`; a running fan-out whose items wait, as
  `running (2 items waiting: pool llm 4/4)`. `waiting_of` reads it for `runview.run_view`, which
  puts it in each stage as `waiting` ({label, since_at, items}); `state_label` words it.
- `plan` shows each stage's limits from the file (plan_limits.py), and, with a reachable Redis,
  the pools and keys full right now (`waits: pool llm 4/4`, `live_waits`).
- `placement_warnings` prints what `submit`'s placement check warns of (engine/placement.py).
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import redis

from orchestration.cli._common import say
from orchestration.cli.plan_limits import settings_limits_or_none
from orchestration.engine.capacity_reads import limit_holders, waiting_items
from orchestration.engine.limits import gate_for
from orchestration.engine.placement import QueueUnserved
from orchestration.engine.store import RunStore
from orchestration.fleet.health import quick_client
from orchestration.graph.resolve import RunGraph
from orchestration.language.durations import format_duration
from orchestration.settings import Settings
from orchestration.states import State

# -- a run's waiting stages -----------------------------------------------------------------------


def waiting_of(
    store: RunStore, run_id: str, stage_id: str, stage: Mapping[str, Any], detail: Mapping[str, str]
) -> dict[str, Any] | None:
    """What a stage waits for: {label, since_at (epoch s), items (a fan-out's waiting items, else
    None)}, or None. `stage` is the stage of `Client.status`, `detail` its record."""
    state = stage.get("state")
    if state == State.QUEUED and detail.get("waiting"):
        return {"label": detail["waiting"], "since_at": _number(detail.get("waiting_since")), "items": None}
    if (
        state != State.RUNNING
        or "items_total" not in stage
        or stage.get("items_done") == stage["items_total"]
    ):
        return None
    if not detail.get("waiting") and not _limited(store.runs.graph(run_id), stage_id):
        return None  # no item of a fan-out without limits waits: its items hash is not scanned
    items = waiting_items(store, run_id, stage_id)
    if not items:
        return None
    label = Counter(items.values()).most_common(1)[0][0]
    return {"label": label, "since_at": _number(detail.get("waiting_since")), "items": len(items)}


def _limited(graph: RunGraph, stage_id: str) -> bool:
    try:
        return gate_for(graph, graph.node(stage_id), "") is not None
    except (KeyError, AttributeError):
        return True  # a graph written by another version: look


def _number(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None


def state_label(stage: Mapping[str, Any]) -> str:
    """The state as shown: `waiting (pool llm 4/4)` for a queued stage that waits for a slot,
    `running (2 items waiting: pool llm 4/4)` for a fan-out whose items wait, else the state."""
    state = str(stage.get("state") or State.PENDING)
    waiting = stage.get("waiting")
    if not waiting:
        return state
    items = waiting.get("items")
    if items:
        return f"{state} ({items} item{'' if items == 1 else 's'} waiting: {waiting['label']})"
    return f"waiting ({waiting['label']})"


# -- a plan's limits --------------------------------------------------------------------------------


def live_waits(settings: Settings, graph: RunGraph, timeout_s: float = 2.0) -> dict[str, list[str]] | None:
    """Stage id -> the pools and concurrency keys it names that are full right now (`pool llm 4/4`),
    read from the configured Redis; None without a reachable Redis."""
    if not settings.redis_url:
        return None
    pools, rates = settings_limits_or_none(settings)
    counts = {
        node.id: [c for c in gate.counts if not c.id.startswith("run:")]
        for node in graph.nodes
        if (gate := gate_for(graph, node, "", pools, rates)) is not None
    }
    ids = {c.id for listed in counts.values() for c in listed}
    if not ids:
        return {}
    client = quick_client(settings, timeout_s)
    try:
        held = limit_holders(RunStore(client, settings), ids)
    except redis.RedisError:
        return None
    finally:
        client.close()
    out: dict[str, list[str]] = {}
    for stage_id, listed in counts.items():
        full = [f"{c.label} {held[c.id]}/{c.cap}" for c in listed if held.get(c.id, 0) >= c.cap]
        if full:
            out[stage_id] = full
    return out


# -- health -------------------------------------------------------------------------------------------


def capacity_lines(capacity: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """`health`'s lines for the queues with stages waiting for capacity (`HealthReport.capacity`):
    `capacity gpu: 3 waiting for GPUs or memory (1 unplaceable), oldest 2m: r1/train asks 4 GPU, ...`."""
    lines = []
    for queue, c in capacity.items():
        if not c.get("waiting"):
            continue
        unplaceable = f" ({c['unplaceable']} unplaceable)" if c.get("unplaceable") else ""
        oldest = f", oldest {format_duration(c['oldest_s'])}" if c.get("oldest_s") is not None else ""
        examples = f": {', '.join(c['examples'])}" if c.get("examples") else ""
        lines.append(
            f"capacity {queue}: {c['waiting']} waiting for GPUs or memory{unplaceable}{oldest}{examples}"
        )
    return lines


# -- submit -------------------------------------------------------------------------------------------


@contextmanager
def placement_warnings() -> Iterator[None]:
    """Print the warnings of `submit`'s placement check (a queue no live worker serves) on stderr."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", QueueUnserved)
        yield
    for w in caught:
        if issubclass(w.category, QueueUnserved):
            say(f"warning: {w.message}", err=True)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
