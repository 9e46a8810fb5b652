"""The store's upkeep of capacity and fleet-wide limits (limits.py, lua/_limits.lua): the reaper's
sweep that wakes waiting stages no release will wake, and giving back the slots of a cancelled run.

`CapacityUpkeep` is part of `store.RunStore` (a base class of `Transitions`, whose cancel uses it).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from orchestration.engine.limits import Capacity, GateKeys, dumps, gate_for, holder
from orchestration.engine.reads import RunReads
from orchestration.engine.scripts import source
from orchestration.graph.resolve import RunGraph


def worker_capacity(name: str, info: Mapping[str, Any]) -> Capacity:
    """A live worker's capacity, from its heartbeat (`host/main` and `host/gpu` share a ledger)."""
    cap = info.get("capacity") or {}
    machine = info.get("machine") or {}
    devices = cap.get("devices")
    if devices is None:
        devices = [str(i) for i in range(int(cap.get("gpus", machine.get("gpus", 0)) or 0))]
    return Capacity(
        host=name.split("/")[0],
        devices=tuple(str(d) for d in devices),
        memory_gb=float(cap.get("memory_gb", machine.get("memory_gb", 0)) or 0),
        slots=int(cap.get("slots", 0) or 0),
    )


class CapacityUpkeep(RunReads):
    _sweep: Any = None
    _release: Any = None

    def sweep_waiting(self, live: Callable[[], Mapping[str, Mapping[str, Any]]]) -> int:
        """Wake stages waiting for a limit's slot or for capacity that is free now (a holder's lease
        ran out, or a worker with room joined or stayed idle); `live` reads the live workers
        (`live_workers`), only when some stage waits for capacity. Returns how many it woke. Costs
        one HGETALL and a ZCARD per queue a tick when nothing waits."""
        k = self.keys
        waited = self._r.hgetall(k.limits_waited())
        classes = []
        workers: Mapping[str, Mapping[str, Any]] | None = None
        for queue in self.settings.queues:
            if self._r.zcard(k.capacity_waiting(queue)):
                workers = live() if workers is None else workers
                ledgers: dict[str, Capacity] = {}
                for name, info in workers.items():
                    if queue in (info.get("queues") or []):
                        cap = worker_capacity(name, info)
                        ledgers[cap.host] = cap
                classes.append((queue, list(ledgers.values())))
        if not waited and not classes:
            return 0
        keys = [k.limits_waited(), k.delayed()]
        spec: dict[str, Any] = {"limits": [], "classes": []}
        for limit_id, cap in waited.items():
            keys += [k.limit_holds(limit_id), k.limit_waiting(limit_id)]
            spec["limits"].append({"id": limit_id, "cap": int(cap)})
        for queue, caps in classes:
            keys.append(k.capacity_waiting(queue))
            for c in caps:
                keys += [k.worker_holds(c.host), k.worker_held(c.host)]
            spec["classes"].append(
                {"workers": [{"devices": list(c.devices), "memory_gb": c.memory_gb} for c in caps]}
            )
        if self._sweep is None:
            self._sweep = self._r.register_script(source("sweep.lua"))
        return int(self._sweep(keys=keys, args=[dumps(spec)]))

    def release_run(self, run_id: str, graph: RunGraph) -> int:
        """Give back the slots the running attempts of a cancelled (or failed-fast) run hold, at once
        rather than when their leases run out (they were stopped with SIGTERM and never commit).
        A count wakes its waiters here; a worker ledger's waiters are woken by the next sweep.
        Returns how many attempts held some."""
        k = self.keys
        keys: list[str] = []
        releases = []
        for node in graph.nodes:
            gate = gate_for(graph, node, run_id)
            if gate is None:
                continue
            units: list[tuple[int | None, str | None, str | None]] = []
            if node.fans_out:
                fields = self._r.hgetall(k.items(run_id, node.id))
                for name, value in fields.items():
                    index, _, field = name.partition(":")
                    if field == "token" and index.isdigit() and fields.get(f"{index}:state") != "succeeded":
                        units.append((int(index), value, fields.get(f"{index}:host")))
            else:
                token, host = self._r.hmget(k.stage(run_id, node.id), ["token", "host"])
                units.append((None, token, host))
            for item, token, host in units:
                if not token:
                    continue
                capacity = Capacity((host or "").split("/")[0], (), 0.0, 0)
                extra = GateKeys(k, len(keys))
                releases.append(extra.release(gate, capacity, holder(run_id, node.id, item, token)))
                keys += extra.list
        if releases:
            if self._release is None:
                self._release = self._r.register_script(source("release.lua"))
            self._release(keys=keys, args=[json.dumps(releases)])
        return len(releases)
