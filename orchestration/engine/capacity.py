"""The store's upkeep of capacity and fleet-wide limits (limits.py, lua/_limits.lua): the reaper's
sweep that wakes waiting stages no release will wake, giving back the slots of a cancelled run, and
dropping what an ended run still has waiting (capacity classes, pools, concurrency keys, max_parallel,
rate slots in the delay set): at its end (`drop_waiters`, from `runs.expire_run`) and, for what
that missed, at each sweep.

`CapacityUpkeep` is the run store's `capacity` (`store.RunStore`); a cancel (`transitions.py`) gives
back the run's slots through it, and a run's expiry (`runs.py`) drops its waiters.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import redis

from orchestration.engine.keys import Keys
from orchestration.engine.limits import Capacity, GateKeys, dumps, gate_for, holder
from orchestration.engine.scripts import source
from orchestration.graph.resolve import RunGraph
from orchestration.language.rates import settings_limits
from orchestration.settings import Settings
from orchestration.states import RUN_ACTIVE, State

SWEEP_READ = 200  # members at the head of each waiting set the sweep checks for ended runs
SCAN_COUNT = 1_000  # members a ZSCAN call looks at when an ended run's waiters are looked for


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


class CapacityUpkeep:
    """Waking what waits for a limit or capacity, giving back a cancelled run's slots, dropping an
    ended run's waiters (see the module docstring)."""

    def __init__(self, client: redis.Redis, settings: Settings, keys: Keys):
        self._r: Any = client
        self.settings = settings
        self.keys = keys
        self._sweep: Any = None  # sweep.lua and release.lua, registered when first run
        self._release: Any = None

    def sweep_waiting(self, live: Callable[[], Mapping[str, Mapping[str, Any]]]) -> int:
        """Wake stages waiting for a limit's slot or for capacity that is free now (a holder's lease
        ran out, or a worker with room joined or stayed idle); `live` reads the live workers
        (`fleet.live_workers`), only when some stage waits for capacity. Returns how many it woke. Costs
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
        sets = [k.capacity_waiting(queue) for queue, _ in classes] + [k.limit_waiting(i) for i in waited]
        self._drop(self._ended_waiters(sets))
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
                    if (
                        field == "token"
                        and index.isdigit()
                        and fields.get(f"{index}:state") != State.SUCCEEDED
                    ):
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
            self._release_script()(keys=keys, args=[json.dumps(releases), "[]"])
        return len(releases)

    def drop_waiters(self, run_id: str, graph: RunGraph) -> int:
        """Take an ended run's stages out of every set where they wait: capacity classes, limits'
        waiting sets, the delay set (rate slots, retries' delays); its stages' `waiting` labels go
        too. Nothing is dropped while the run is running or paused (the script checks). A run with
        no limits costs nothing; another scans the waiting sets once, and the delay set when some
        stage has a rate (at cancel and run end only: `runs.expire_run`). Returns how many it dropped."""
        k = self.keys
        try:  # this process's pools and rates count too (CHORDFLOW_POOLS, CHORDFLOW_RATE_LIMITS)
            pools, type_rates = settings_limits(self.settings)
        except ValueError:
            pools, type_rates = {}, {}
        gates = [(n.id, gate_for(graph, n, run_id, pools, type_rates)) for n in graph.nodes]
        waiting = [sid for sid, gate in gates if gate is not None]
        if not waiting:
            return 0  # a run with no limits never waits: nothing to scan
        sets = {k.capacity_waiting(q) for q in self.settings.queues}
        sets.update(k.limit_waiting(limit_id) for limit_id in self._r.hkeys(k.limits_waited()))
        for _, gate in gates:
            if gate is None:
                continue
            if gate.rates:
                # a rate's reserved slot waits in the delay set (other delayed messages of an ended
                # run are dropped by begin when due: the set is scanned only for runs with rates)
                sets.add(k.delayed())
            if gate.on_ledger:
                sets.add(k.capacity_waiting(gate.queue))
            sets.update(k.limit_waiting(c.id) for c in gate.counts)
        found: dict[str, list[str]] = {}
        for key in sorted(sets):
            for member, _ in self._r.zscan_iter(key, match=f'*"{run_id}"*', count=SCAN_COUNT):
                if waiter_run(member) == run_id:
                    found.setdefault(key, []).append(member)
        return self._drop({run_id: found}, {run_id: waiting})

    def _ended_waiters(self, sets: Iterable[str]) -> dict[str, dict[str, list[str]]]:
        """Run id -> {waiting set -> members} at the head of `sets` whose run has ended or is gone."""
        pipe = self._r.pipeline(transaction=False)
        keys = list(sets)
        for key in keys:
            pipe.zrange(key, 0, SWEEP_READ - 1)
        by_run: dict[str, dict[str, list[str]]] = {}
        for key, members in zip(keys, pipe.execute()):
            for member in members:
                run_id = waiter_run(member)
                if run_id is not None:
                    by_run.setdefault(run_id, {}).setdefault(key, []).append(member)
        runs = list(by_run)
        pipe = self._r.pipeline(transaction=False)
        for run_id in runs:
            pipe.hget(self.keys.run(run_id), "status")
        active = {r for r, status in zip(runs, pipe.execute()) if status in RUN_ACTIVE}
        return {r: sets_of for r, sets_of in by_run.items() if r not in active}

    def _drop(
        self, found: Mapping[str, Mapping[str, list[str]]], stages: Mapping[str, list[str]] | None = None
    ) -> int:
        """Drop `found` (run id -> {set -> members}) and the runs' `stages`' waiting labels, in one
        script that re-checks each run has ended."""
        stages = stages or {}
        if not any(found.values()) and not any(stages.values()):
            return 0
        keys: list[str] = []

        def at(key: str) -> int:
            keys.append(key)
            return len(keys)

        drops = [
            {
                "run": at(self.keys.run(run_id)),
                "sets": [{"k": at(key), "members": members} for key, members in sets_of.items()],
                "stages": [at(self.keys.stage(run_id, sid)) for sid in stages.get(run_id, [])],
            }
            for run_id, sets_of in {**{r: {} for r in stages}, **found}.items()
        ]
        return int(self._release_script()(keys=keys, args=["[]", json.dumps(drops)]))

    def _release_script(self) -> Any:
        if self._release is None:
            self._release = self._r.register_script(source("release.lua"))
        return self._release


def waiter_run(member: str) -> str | None:
    """The run id of a waiting set's or the delay set's member: a message payload
    `["run", "stage", attempt, item]` or a capacity waiter `{"run": ..., "p": payload, ...}`."""
    try:
        value = json.loads(member)
    except ValueError:
        return None
    if isinstance(value, list) and value and isinstance(value[0], str):
        return value[0]
    if isinstance(value, dict) and isinstance(value.get("run"), str):
        return str(value["run"])
    return None
