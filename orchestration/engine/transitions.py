"""Every change of a stage's or a run's state, each one Lua script (`lua/*.lua`).

A transition checks before it writes and is fenced by the attempt's token, so a
duplicate delivery or a late commit changes nothing. Every key a script touches
is passed in KEYS, built by `keys.Keys`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import redis

from orchestration.engine.capacity import CapacityUpkeep
from orchestration.engine.keys import encode_member
from orchestration.engine.limits import Capacity, Gate, GateKeys, dumps, holder
from orchestration.engine.scripts import Script, source
from orchestration.graph.resolve import RunGraph
from orchestration.settings import Settings


@dataclass
class Commit:
    """What finish.lua decided."""

    verdict: str  # ok | item | stale | late
    finalized: bool
    run_status: str
    ready: list[str] = field(default_factory=list)
    revoke: list[str] = field(default_factory=list)
    next_item: int | None = None
    reason: str = ""  # why, when the verdict is 'invalid' (nothing was written)


class FanoutStart(NamedTuple):
    """How a fan-out started: the items the caller must send first (none when every item was kept
    by a retried run), or `enqueued` when the script enqueued them itself."""

    items: list[int]
    enqueued: bool = False


class Transitions(CapacityUpkeep):
    """The run store's transitions: each method runs one script (begin, renew, retry, finish,
    start_fanout, control; reopen clears the run's TTLs first)."""

    def __init__(self, client: redis.Redis, settings: Settings):
        super().__init__(client, settings)
        self._begin = Script(client, "begin.lua")
        # the same scripts with lua/_limits.lua, for the stages that have a gate (limits.py)
        self._begin_gated = Script(client, "begin.lua", limits=True)
        self._retry_gated = Script(client, "retry.lua", limits=True)
        self._finish_gated = Script(client, "finish.lua", limits=True)
        self._renew = client.register_script(source("renew.lua"))
        self._claim = client.register_script(source("claim.lua"))
        self._retry = Script(client, "retry.lua")
        self._finish = Script(client, "finish.lua")
        self._fanout = client.register_script(source("fanout.lua"))
        self._control = client.register_script(source("control.lua"))
        self._reopen = client.register_script(source("reopen.lua"))

    def begin(
        self,
        run_id: str,
        stage_id: str,
        item: int | None,
        attempt: int,
        host: str,
        queue: str,
        task_id: str,
        payload: str,
        read: Sequence[str] = (),
        notify: Sequence[str] = (),
        gate: tuple[Gate, Capacity] | None = None,
    ) -> list[Any]:
        """Start an attempt; with 'run' comes its token and the JSON outputs of the `read` stages.

        `notify`: hook entries (JSON) enqueued with the start, for the hook senders. `gate`: the
        stage's limits and this worker's capacity (limits.py): the reply may then be
        ['wait', label], and 'run'/'poison' replies end with the GPU devices given."""
        k = self.keys
        args: dict[str, Any] = {
            "stage": stage_id,
            "item": item,
            "attempt": attempt,
            "host": host,
            "queue": queue,
            "task_id": task_id,
            "lease_ms": int(self.settings.lease_s * 1000),
            "max_crashes": self.settings.max_deliveries,
            "payload": payload,
            "lease": encode_member(run_id, stage_id, item, lease=True),
            "reads": list(read),
            "notify": list(notify),
        }
        keys = [
            k.run(run_id),
            k.states(run_id),
            k.unit(run_id, stage_id, item),
            k.events(run_id),
            k.parked(run_id),
            k.leases(),
            k.outputs(run_id),
            k.hooks(),
        ]
        if gate is not None:
            extra = GateKeys(k, len(keys))
            args["gate"] = extra.admission(gate[0], gate[1], run_id, stage_id, item)
            keys += extra.list
            return self._begin_gated(keys=keys, args=[dumps(args)], allow_oom=True)
        return self._begin(keys=keys, args=[dumps(args)], allow_oom=True)

    def renew(
        self, run_id: str, stage_id: str, item: int | None, token: str, holds: Sequence[str] = ()
    ) -> bool:
        """Extend the attempt's lease by `settings.lease_s`, and its place in the `holds` sets of its
        limits (limits.holds_keys); False when the attempt lost it (stop)."""
        k = self.keys
        prefix = "" if item is None else f"{item}:"
        return bool(
            self._renew(
                keys=[k.unit(run_id, stage_id, item), k.leases(), *holds],
                args=[
                    prefix,
                    token,
                    int(self.settings.lease_s * 1000),
                    encode_member(run_id, stage_id, item, lease=True),
                    holder(run_id, stage_id, item, token),
                ],
            )
        )

    def claim(self, run_id: str, stage_id: str, items: Sequence[int]) -> None:
        """Hold the leases of fan-out items a chunk message carries, until each begins (and keep
        holding them: called again by the lease keeper). If the worker dies first, the claims run
        out and the reaper sends each item that never began on its own."""
        if items:
            members = [encode_member(run_id, stage_id, i, lease=True) for i in items]
            self._claim(keys=[self.keys.leases()], args=[int(self.settings.lease_s * 1000), *members])

    def retry(
        self,
        run_id: str,
        stage_id: str,
        item: int | None,
        token: str,
        error: Mapping[str, Any],
        next_attempt: int,
        delay_s: float,
        park: bool,
        payload: str,
        notify: Sequence[str] = (),
        release: tuple[Gate, Capacity] | None = None,
    ) -> bool:
        """Record a failed attempt that will be tried again after `delay_s`; with `park`, its message
        (`payload`) waits in the delay set. False when the attempt no longer holds the stage.
        `release`: the attempt's limits, given back (limits.py)."""
        k = self.keys
        keys = [
            k.unit(run_id, stage_id, item),
            k.states(run_id),
            k.events(run_id),
            k.delayed(),
            k.leases(),
            k.hooks(),
        ]
        given_back = ""
        if release is not None:
            extra = GateKeys(k, len(keys))
            member = holder(run_id, stage_id, item, token)
            given_back = dumps(extra.release(release[0], release[1], member, delayed=4))
            keys += extra.list
        res = (self._retry_gated if release is not None else self._retry)(
            keys=keys,
            args=[
                stage_id,
                "" if item is None else item,
                token,
                json.dumps(error),
                next_attempt,
                int(delay_s * 1000),
                "1" if park else "0",
                payload,
                encode_member(run_id, stage_id, item, lease=True),
                given_back,
                *notify,
            ],
            allow_oom=True,
        )
        return bool(res[0] == "ok")

    def finish(
        self,
        run_id: str,
        graph: RunGraph,
        stage_id: str,
        item: int | None,
        token: str,
        outcome: str,
        output_json: str = "",
        error: Mapping[str, Any] | None = None,
        context_writes: Sequence[tuple[str, str, str]] = (),
        metrics: Mapping[str, float] | None = None,
        children: Sequence[str] = (),
        descendants: Sequence[str] = (),
        cache_key: str | None = None,
        cache_ttl_s: float = 0,
        cached: bool = False,
        notify: Sequence[str] = (),
        run_hook: bool = False,
        messages: Mapping[str, tuple[str, str, bool]] | None = None,
        next_message: tuple[str, str] | None = None,
        release: tuple[Gate, Capacity] | None = None,
    ) -> Commit:
        """Commit an attempt's end (or, with token '', a stage's end decided outside any attempt).

        The script checks everything before it writes: a verdict 'invalid' wrote nothing, and
        `Commit.reason` says why. A failure's commit may run when Redis is at maxmemory.

        `messages` ({child: (queue, broker text, front)}) are enqueued by the script for the children
        it makes ready (`front`: first in line, for the critical path), and `next_message` ((queue,
        template)) for a windowed fan-out's next item:
        those need no sending after the commit (engine/messages.py)."""
        k = self.keys
        node = graph.node(stage_id)
        failing = outcome == "failed"
        others: list[str] = []
        if failing and node.critical:
            others = (
                [n.id for n in graph.nodes if n.id != stage_id]
                if graph.fail_fast
                else [sid for sid in descendants if sid != stage_id]
            )
        args: dict[str, Any] = {
            "stage": stage_id,
            "item": item,
            "token": token,
            "outcome": outcome,
            "output": output_json,
            "error": json.dumps(error) if error else "",
            "context": [list(w) for w in context_writes],
            "metrics": [[name, repr(float(v))] for name, v in (metrics or {}).items()],
            "children": list(children),
            "descendants": list(descendants),
            "others": others,
            "critical": node.critical,
            "fail_fast": graph.fail_fast,
            "lease": encode_member(run_id, stage_id, item, lease=True),
            "windowed": bool(node.max_concurrency),
            "run_id": run_id,
            "cache_ttl": cache_ttl_s if cache_key else 0,
            "cached": cached,
            "notify": list(notify),
            "run_hook": run_hook,
            "pipeline": graph.name,
            "fanout_cap": self.settings.fanout_output_cap_bytes if item is not None else 0,
        }
        queues: list[str] = []

        def queue_no(name: str) -> int:  # 1-based, into the queue keys after the others' keys
            if name not in queues:
                queues.append(name)
            return queues.index(name) + 1

        args["messages"] = {
            child: [queue_no(q), text, front] for child, (q, text, front) in (messages or {}).items()
        }
        args["next"] = [queue_no(next_message[0]), next_message[1]] if next_message else None
        keys = [
            k.run(run_id),
            k.states(run_id),
            k.unit(run_id, stage_id, item),
            k.events(run_id),
            k.outputs(run_id),
            k.context(run_id),
            k.metrics(run_id),
            k.pending(run_id),
            k.stage(run_id, stage_id),
            k.leases(),
            k.outbox(),
            k.hooks(),
            k.cache(cache_key) if cache_key else k.run(run_id),
        ]
        for sid in others:
            keys += [k.stage(run_id, sid), k.items(run_id, sid)]
        keys += [k.broker_queue(q) for q in queues]
        script = self._finish
        if release is not None and token:
            extra = GateKeys(k, len(keys))
            args["release"] = extra.release(release[0], release[1], holder(run_id, stage_id, item, token))
            keys += extra.list
            script = self._finish_gated
        # A failure that writes nothing of its own may be committed at maxmemory, so the run ends.
        verdict, finalized, status, ready, revoke, next_item = script(
            keys=keys,
            args=[dumps(args)],
            allow_oom=failing and not context_writes and not metrics,
        )
        if verdict == "invalid":
            return Commit(verdict, False, "", reason=status)
        return Commit(
            verdict,
            bool(finalized),
            status,
            list(ready),
            list(revoke),
            int(next_item) if next_item != "" else None,
        )

    def start_fanout(
        self,
        run_id: str,
        stage_id: str,
        total: int,
        window: int,
        queue: str,
        template: str = "",
        chunk: int = 1,
    ) -> FanoutStart | None:
        """Start a fan-out stage once; None when this call did not start it. With an item message
        `template` (engine/messages.py) the script enqueues the first items itself, atomically
        with the start, `chunk` consecutive items at most per message."""
        k = self.keys
        res = self._fanout(
            keys=[
                k.states(run_id),
                k.stage(run_id, stage_id),
                k.events(run_id),
                k.run(run_id),
                k.items(run_id, stage_id),
                k.broker_queue(queue),
            ],
            args=[stage_id, total, window, queue, template, chunk],
        )
        if res[0] == 0:
            return None
        if res[0] == 2:
            return FanoutStart([])
        if res[0] == 3:
            return FanoutStart([], enqueued=True)
        return FanoutStart([int(i) for i in res[1:]] if len(res) > 1 else list(range(window)))

    def control(self, run_id: str, op: str, pipeline: str = "") -> tuple[str, list[str]]:
        """cancel, pause or resume the run; its hook event (run_complete 'cancelled', run_paused,
        run_resumed) goes to the hooks outbox in the same step. `pipeline` defaults to the run's."""
        k = self.keys
        keys = [k.run(run_id), k.states(run_id), k.events(run_id), k.parked(run_id), k.hooks()]
        stage_ids: list[str] = []
        if op == "cancel":
            stage_ids = [n.id for n in self.graph(run_id).nodes]
            for sid in stage_ids:
                keys += [k.stage(run_id, sid), k.items(run_id, sid)]
        verdict, payload = self._control(keys=keys, args=[op, run_id, pipeline, json.dumps(stage_ids)])
        if op == "cancel" and verdict == "ok":
            self.release_run(run_id, self.graph(run_id))  # its stopped stages never commit
        return verdict, list(payload) if isinstance(payload, list) else [payload]

    def reopen(self, run_id: str, graph: RunGraph) -> tuple[str, list[str]]:
        """Put a failed or cancelled run back to running from its point of failure."""
        k = self.keys
        pipe = self._r.pipeline(transaction=False)
        for key in k.run_keys(run_id, [n.id for n in graph.nodes]):
            pipe.persist(key)
        pipe.execute()
        keys = [k.run(run_id), k.states(run_id), k.pending(run_id), k.events(run_id), k.outbox()]
        for n in graph.nodes:
            keys += [k.stage(run_id, n.id), k.items(run_id, n.id)]
        verdict, detail = self._reopen(
            keys=keys,
            args=[run_id, json.dumps([[n.id, list(n.needs)] for n in graph.nodes])],
        )
        return verdict, list(detail) if isinstance(detail, list) else [detail]


__all__ = ["Commit", "FanoutStart", "Transitions"]
