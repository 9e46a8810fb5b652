"""A stage's gate: the capacity and fleet-wide limits `begin.lua` admits it against, and what its
commit gives back (lua/_limits.lua does both, atomically with the begin and the commit).

A stage is *limited* when it asks for GPUs or memory (the worker's ledger), names a pool (its size
and rate) or a concurrency key, its type has a rate limit, or its run has `max_parallel`. Every
other stage has no gate: its begin, renewal and commit are the scripts and keys they always were.

Each limit counts holders ('<lease member>#<token>') scored by their lease's expiry, so a slot
comes back at the commit, at a stale or late commit, at a retry, and, if the worker died, when its
lease runs out. A stage refused waits in Redis (a limit's waiting set, its capacity class's, or the
delay set at its reserved slot for a rate), not in a worker process, and is woken by a release, by
the reaper's sweep, or by its slot's time.

Where the file and the process's settings (CHORDFLOW_POOLS, CHORDFLOW_RATE_LIMITS) both set a
limit, the tighter one counts.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from orchestration.engine.keys import Keys, encode_member
from orchestration.graph.resolve import Node, RunGraph
from orchestration.language.rates import PoolLimit, RateLimit, tighter_pool, tighter_rate


@dataclass(frozen=True)
class Capacity:
    """What one worker (a `chordflow worker` on one host) admits stages against."""

    host: str
    devices: tuple[str, ...]
    memory_gb: float
    slots: int

    def describe(self) -> dict[str, Any]:
        return {
            "gpus": len(self.devices),
            "devices": list(self.devices),
            "memory_gb": self.memory_gb,
            "slots": self.slots,
        }


@dataclass(frozen=True)
class Count:
    id: str  # 'pool:<name>', 'key:<value>', 'run:<run id>'
    cap: int
    label: str  # 'pool llm', as `status` shows it with the count: 'pool llm 4/4'


@dataclass(frozen=True)
class Rate:
    id: str  # 'pool:<name>', 'type:<stage type>'
    interval_ms: float
    label: str  # 'rate vendor.call 5/s'


@dataclass(frozen=True)
class Gate:
    counts: tuple[Count, ...] = ()
    rates: tuple[Rate, ...] = ()
    gpu: int = 0
    memory_gb: float = 0.0
    queue: str = ""

    @property
    def on_ledger(self) -> bool:
        """Whether the stage takes GPUs or memory from its worker's ledger."""
        return self.gpu > 0 or self.memory_gb > 0


def gate_for(
    graph: RunGraph,
    node: Node,
    run_id: str,
    pools: Mapping[str, PoolLimit] | None = None,
    type_rates: Mapping[str, RateLimit] | None = None,
) -> Gate | None:
    """The stage's gate, or None (no limits: the fast path). `pools`/`type_rates`: this process's
    settings (language/rates.settings_limits), merged with the run's by the tighter."""
    resources = node.resources
    gpu = resources.gpu if resources is not None else 0
    memory_gb = (resources.memory_gb or 0.0) if resources is not None else 0.0
    type_rate = tighter_rate(graph.type_rates.get(node.type), (type_rates or {}).get(node.type))
    if not (node.pool or node.concurrency_key or graph.max_parallel or gpu or memory_gb or type_rate):
        return None
    counts: list[Count] = []
    rates: list[Rate] = []
    if node.pool:
        pool = tighter_pool(graph.pools.get(node.pool), (pools or {}).get(node.pool))
        if pool is not None and pool.size is not None:
            counts.append(Count(f"pool:{node.pool}", pool.size, f"pool {node.pool}"))
        if pool is not None and pool.rate is not None:
            rates.append(
                Rate(f"pool:{node.pool}", pool.rate.interval_ms, f"rate pool {node.pool} {pool.rate.text}")
            )
    if node.concurrency_key:
        counts.append(Count(f"key:{node.concurrency_key}", 1, f"key {node.concurrency_key}"))
    if graph.max_parallel:
        counts.append(Count(f"run:{run_id}", graph.max_parallel, "max_parallel"))
    if type_rate is not None:
        rates.append(Rate(f"type:{node.type}", type_rate.interval_ms, f"rate {node.type} {type_rate.text}"))
    return Gate(tuple(counts), tuple(rates), gpu, memory_gb, node.queue)


def holder(run_id: str, stage_id: str, item: int | None, token: str) -> str:
    """An attempt's member in the holds sets of its limits."""
    return f"{encode_member(run_id, stage_id, item, lease=True)}#{token}"


class GateKeys:
    """The keys and the JSON of a gate for the scripts, numbered from `base` (the script's own keys
    come first)."""

    def __init__(self, keys: Keys, base: int):
        self.keys, self.base = keys, base
        self.list: list[str] = []

    def add(self, key: str) -> int:
        self.list.append(key)
        return self.base + len(self.list)

    def admission(
        self,
        gate: Gate,
        capacity: Capacity,
        run_id: str,
        stage_id: str,
        item: int | None,
    ) -> dict[str, Any]:
        k = self.keys
        spec: dict[str, Any] = {
            "stage_hash": self.add(k.stage(run_id, stage_id)),
            "delayed": self.add(k.delayed()),
            "waited": self.add(k.limits_waited()),
            "counts": [
                {
                    "k": self.add(k.limit_holds(c.id)),
                    "w": self.add(k.limit_waiting(c.id)),
                    "cap": c.cap,
                    "id": c.id,
                    "label": c.label,
                }
                for c in gate.counts
            ],
            "rates": [
                {"k": self.add(k.limit_rate(r.id)), "interval": r.interval_ms, "label": r.label}
                for r in gate.rates
            ],
        }
        if gate.on_ledger:
            spec["worker"] = {
                **self._ledger(capacity, gate.queue),
                "gpu": gate.gpu,
                "need_gb": gate.memory_gb,
                "host": capacity.host,
                "queue": gate.queue,
            }
            spec["who"] = {
                "run": run_id,
                "stage": stage_id,
                "item": item,
                "gpu": gate.gpu,
                "memory_gb": gate.memory_gb or None,
            }
        return spec

    def release(
        self, gate: Gate, capacity: Capacity, member: str, delayed: int | None = None
    ) -> dict[str, Any]:
        k = self.keys
        spec: dict[str, Any] = {
            "holder": member,
            "delayed": delayed if delayed is not None else self.add(k.delayed()),
            "counts": [
                {"k": self.add(k.limit_holds(c.id)), "w": self.add(k.limit_waiting(c.id)), "cap": c.cap}
                for c in gate.counts
            ],
        }
        if gate.on_ledger:
            spec["worker"] = self._ledger(capacity, gate.queue)
        return spec

    def _ledger(self, capacity: Capacity, queue: str) -> dict[str, Any]:
        k = self.keys
        return {
            "k": self.add(k.worker_holds(capacity.host)),
            "h": self.add(k.worker_held(capacity.host)),
            "w": self.add(k.capacity_waiting(queue)),
            "devices": list(capacity.devices),
            "memory_gb": capacity.memory_gb,
        }


def holds_keys(keys: Keys, gate: Gate, capacity: Capacity) -> list[str]:
    """The holds sets a renewal moves the attempt's holder forward in."""
    out = [keys.limit_holds(c.id) for c in gate.counts]
    if gate.on_ledger:
        out.append(keys.worker_holds(capacity.host))
    return out


def dumps(spec: Mapping[str, Any]) -> str:
    return json.dumps(spec, separators=(",", ":"))
