"""Reads of what waits for capacity and fleet-wide limits, for `health`, `status`, the run page and
`plan` (limits.py and lua/_limits.lua write all of it; nothing here writes).

- `capacity_waiting`: a queue's stages that no worker could fit when they began, oldest first.
- `waiting_items`: the items of a fan-out that wait for a slot, with the label of what they wait for.
- `limit_holders`: how many attempts hold a limit now (a holder whose lease ran out is not counted).

Free functions of a run store (`store.RunStore`, on its client): they are reads for people, not
one of the parts a run needs.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from orchestration.engine.store import RunStore

WAITING_READ = 10_000  # members of a capacity class read at most (the count is always exact)
ITEMS_SCAN = 200_000  # fields of a fan-out's items hash scanned at most for waiting items
SCAN_COUNT = 2_000  # fields an HSCAN call looks at


@dataclass(frozen=True)
class Waiter:
    """A stage (or item) waiting for a worker with room: what it asks, since when (epoch s)."""

    run_id: str
    stage_id: str
    item: int | None
    gpu: int
    memory_gb: float | None
    since: float

    @property
    def where(self) -> str:
        """`run/stage` or `run/stage[3]`."""
        return f"{self.run_id}/{self.stage_id}" + (f"[{self.item}]" if self.item is not None else "")


def capacity_waiting(store: RunStore, queue: str, limit: int = WAITING_READ) -> tuple[int, list[Waiter]]:
    """How many stages of `queue` wait for capacity, and the oldest `limit` of them (malformed
    members are skipped)."""
    key = store.keys.capacity_waiting(queue)
    pipe = store._r.pipeline(transaction=False)
    pipe.zcard(key)
    pipe.zrange(key, 0, limit - 1, withscores=True)
    total, members = pipe.execute()
    out = []
    for raw, score in members:
        try:
            who: dict[str, Any] = json.loads(raw)
            item = who.get("item")
            out.append(
                Waiter(
                    str(who["run"]),
                    str(who["stage"]),
                    int(item) if item is not None else None,
                    int(who.get("gpu") or 0),
                    float(who["memory_gb"]) if who.get("memory_gb") else None,
                    float(score) / 1000,
                )
            )
        except (ValueError, TypeError, KeyError, AttributeError):
            continue
    return int(total), out


def waiting_items(store: RunStore, run_id: str, stage_id: str) -> dict[int, str]:
    """Item index -> what it waits for (`pool llm 4/4`), for the items of a fan-out that wait (of a
    huge fan-out, among its first ITEMS_SCAN fields)."""
    out: dict[int, str] = {}
    key = store.keys.items(run_id, stage_id)
    cursor = 0
    for _ in range(ITEMS_SCAN // SCAN_COUNT):
        cursor, found = store._r.hscan(key, cursor, match="*:waiting", count=SCAN_COUNT)
        for name, value in found.items():
            index, _, what = str(name).partition(":")
            if what == "waiting" and index.isdigit() and value:
                out[int(index)] = str(value)
        if not cursor:
            break
    return out


def limit_holders(store: RunStore, limits: Iterable[str]) -> dict[str, int]:
    """Limit id ('pool:llm', 'key:deploy-prod', 'run:<id>') -> the attempts holding it now."""
    ids = list(dict.fromkeys(limits))
    if not ids:
        return {}
    now_ms = int(store.runs.server_time() * 1000)
    pipe = store._r.pipeline(transaction=False)
    for limit in ids:
        pipe.zcount(store.keys.limit_holds(limit), f"({now_ms}", "+inf")
    return dict(zip(ids, (int(n) for n in pipe.execute())))
