"""Every change of a stage's or a run's state, each one Lua script (`lua/*.lua`), and the leases
of the running attempts those scripts keep.

A transition checks before it writes and is fenced by the attempt's token, so a
duplicate delivery or a late commit changes nothing. Every key a script touches
is passed in KEYS, built by `keys.Keys`. `Transitions` is the run store's `transitions`
(`store.RunStore`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, NamedTuple

import redis

from orchestration.engine.capacity import CapacityUpkeep
from orchestration.engine.commit import (
    BeginRequest,
    CommitRequest,
    RetryRequest,
    begin_call,
    finish_call,
    retry_call,
)
from orchestration.engine.keys import Keys, decode_member, encode_member
from orchestration.engine.limits import holder
from orchestration.engine.replies import (
    BeginReply,
    Commit,
    RetryReply,
    decode_begin,
    decode_claim,
    decode_finish,
    decode_retry,
)
from orchestration.engine.runs import Runs
from orchestration.engine.scripts import Script, source
from orchestration.graph.resolve import RunGraph
from orchestration.settings import Settings

log = logging.getLogger("chordflow.store")


class FanoutStart(NamedTuple):
    """How a fan-out started: the items the caller must send first (none when every item was kept
    by a retried run), or `enqueued` when the script enqueued them itself."""

    items: list[int]
    enqueued: bool = False


class Transitions:
    """The run store's transitions: each method runs one script (begin, renew, claim, retry,
    finish, start_fanout, control; reopen clears the run's TTLs first); and the leases the reaper
    reads (expired_leases, lease_state, release_lease, defer_lease)."""

    def __init__(
        self, client: redis.Redis, settings: Settings, keys: Keys, runs: Runs, capacity: CapacityUpkeep
    ):
        self._r: Any = client
        self.settings = settings
        self.keys = keys
        self._runs = runs  # a cancel reads the run's graph
        self._capacity = capacity  # ... and gives back its slots
        self._replicas = runs.replicas  # CHORDFLOW_REPLICAS_ACK (None: off)
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

    def begin(self, req: BeginRequest) -> BeginReply:
        """Start an attempt (commit.BeginRequest): `BeginRun` with its token and the outputs it
        reads, or why not (replies.py). A stage with limits may get `BeginWait`: its message then
        waits in Redis.

        With CHORDFLOW_REPLICAS_ACK no WAIT follows it: a replica applies writes in order, so the
        WAIT of the attempt's commit confirms its start too, and a start a failover loses costs a
        run again, not a commit (the attempt's next renewal fails on the new primary and stops it;
        the anti-entropy sweep sends the stage again)."""
        call = begin_call(self.keys, self.settings, req)
        script = self._begin_gated if call.gated else self._begin
        return decode_begin(script(keys=call.keys, args=call.args, allow_oom=call.allow_oom), call.gated)

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

    def claim(self, run_id: str, stage_id: str, items: Sequence[int]) -> int | None:
        """Hold the leases of fan-out items a chunk message carries, until each begins (and keep
        holding them: called again by the lease keeper). If the worker dies first, the claims run
        out and the reaper sends each item that never began on its own. Returns their expiry (ms)."""
        if not items:
            return None
        members = [encode_member(run_id, stage_id, i, lease=True) for i in items]
        raw = self._claim(keys=[self.keys.leases()], args=[int(self.settings.lease_s * 1000), *members])
        return decode_claim(raw)

    def retry(self, req: RetryRequest) -> RetryReply:
        """Record a failed attempt that will be tried again (commit.RetryRequest); `held` is False
        when the attempt no longer holds the stage. Its limits are given back either way."""
        call = retry_call(self.keys, req)
        script = self._retry_gated if call.gated else self._retry
        return decode_retry(script(keys=call.keys, args=call.args, allow_oom=call.allow_oom))

    def finish(self, req: CommitRequest) -> Commit:
        """Commit an attempt's end (or, with token '', a stage's end decided outside any attempt).

        The script checks everything before it writes: a verdict INVALID wrote nothing, and
        `Commit.reason` says why. A failure's commit may run when Redis is at maxmemory. The
        messages of the children it makes ready (and of a windowed fan-out's next item) are
        enqueued by the script itself (engine/messages.py): they need no sending after it.
        With CHORDFLOW_REPLICAS_ACK, `Commit.replication` says how many replicas of the server that
        answered confirmed it (a commit sent again and found ALREADY in included: durability.Replicas)."""
        call = finish_call(self.keys, self.settings, req)
        script = self._finish_gated if call.gated else self._finish
        wait = self._replicas
        raw = script(keys=call.keys, args=call.args, allow_oom=call.allow_oom, wait=wait)
        if wait is None:
            return decode_finish(raw)
        raw, got = raw
        return replace(decode_finish(raw), replication=got)

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
        return FanoutStart([int(i) for i in res[1]] if len(res) > 1 and res[1] else list(range(window)))

    def control(self, run_id: str, op: str, pipeline: str = "") -> tuple[str, list[str]]:
        """cancel, pause or resume the run; its hook event (run_complete 'cancelled', run_paused,
        run_resumed) goes to the hooks outbox in the same step. `pipeline` defaults to the run's."""
        k = self.keys
        keys = [k.run(run_id), k.states(run_id), k.events(run_id), k.parked(run_id), k.hooks()]
        stage_ids: list[str] = []
        if op == "cancel":
            stage_ids = [n.id for n in self._runs.graph(run_id).nodes]
            for sid in stage_ids:
                keys += [k.stage(run_id, sid), k.items(run_id, sid)]
        keys.append(k.run_ends(run_id))
        verdict, payload = self._control(keys=keys, args=[op, run_id, pipeline, json.dumps(stage_ids)])
        if op == "cancel" and verdict == "ok":
            self._capacity.release_run(run_id, self._runs.graph(run_id))  # its stopped stages never commit
        return verdict, list(payload) if isinstance(payload, list) else [payload]

    def reopen(self, run_id: str, graph: RunGraph) -> tuple[str, list[str]]:
        """Put a failed or cancelled run back to running from its point of failure."""
        k = self.keys
        pipe = self._r.pipeline(transaction=False)
        # active again before its TTLs go: if the script then finds nothing to reopen (the run did
        # not fail) or this process dies, the reaper's sweep sees it ended and expires it again
        pipe.zadd(k.active_runs(), {run_id: time.time()}, nx=True)
        for key in k.run_keys(run_id, [n.id for n in graph.nodes], {n.id for n in graph.nodes if n.fans_out}):
            pipe.persist(key)
        pipe.execute()
        keys = [k.run(run_id), k.states(run_id), k.pending(run_id), k.events(run_id), k.outbox()]
        for n in graph.nodes:
            keys += [k.stage(run_id, n.id), k.items(run_id, n.id)]
        keys.append(k.run_ends(run_id))
        verdict, detail = self._reopen(
            keys=keys,
            args=[run_id, json.dumps([[n.id, list(n.needs)] for n in graph.nodes])],
        )
        return verdict, list(detail) if isinstance(detail, list) else [detail]

    # -- leases: running attempts, by the time their worker must have renewed them ------------
    def expired_leases(self, now_ms: int, limit: int = 200) -> list[tuple[str, str, int | None]]:
        """(run id, stage id, item) of up to `limit` leases that expired by `now_ms` (Redis's clock)."""
        members = self._r.zrangebyscore(self.keys.leases(), 0, now_ms, start=0, num=limit)
        return [decode_member(member) for member in members]

    def lease_state(self, run_id: str, stage_id: str, item: int | None) -> tuple[str | None, int, int]:
        """The unit's state, its lease expiry (ms, Redis's clock; 0 if none) and its attempt (1 if none)."""
        prefix = "" if item is None else f"{item}:"
        state, lease_exp, attempt = self._r.hmget(
            self.keys.unit(run_id, stage_id, item),
            [f"{prefix}state", f"{prefix}lease_exp", f"{prefix}attempt"],
        )
        return state, int(lease_exp or 0), int(attempt or 1)

    def release_lease(self, run_id: str, stage_id: str, item: int | None) -> None:
        """Forget a lease (its attempt ended, or its run did)."""
        self._r.zrem(self.keys.leases(), encode_member(run_id, stage_id, item, lease=True))

    def defer_lease(self, run_id: str, stage_id: str, item: int | None, until_ms: int) -> None:
        """Move an existing lease's expiry to `until_ms` (Redis's clock); no lease is added."""
        member = encode_member(run_id, stage_id, item, lease=True)
        self._r.zadd(self.keys.leases(), {member: until_ms}, xx=True)


__all__ = ["Commit", "FanoutStart", "Transitions"]
