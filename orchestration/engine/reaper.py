"""The reaper: one worker at a time (by a Redis lock) repairs what crashes leave behind.

- An attempt whose lease expired (its worker was SIGKILLed, frozen or cut off)
  is sent again as the next attempt; its old holder can no longer commit
  (fencing), and `begin.lua` counts the crash, quarantining a poison message.
- A fan-out item that a chunk message claimed but that never began (the worker died
  while running the chunk's earlier items) is sent on its own when its claim runs out.
- A stage made ready whose message was never confirmed sent (the submitter or
  a worker died between the commit and the send) is sent again, and so are the
  first items of a fan-out whose dispatcher died after starting it. Duplicates
  are harmless: a second delivery of a started stage is dropped by `begin.lua`.

- A queued or retrying stage (or fan-out item) whose message no one holds (no lease, no outbox or
  waiting entry, not in its queue, a consumer's hands or the delay set) is sent again, by the
  anti-entropy sweep every `sweep_s` (antientropy.py).
- After the Redis primary changes (a failover, a restart), leases are judged again only one lease
  later, so a clock that runs ahead on the new primary does not expire live leases.

- A stage waiting for a limit's slot or for capacity (engine/limits.py) whose holder's lease ran
  out, or that fits a worker no release will come from, is woken (`sweep_waiting`).

All times are Redis's clock, so machines with skewed clocks agree.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from orchestration.engine.antientropy import AntiEntropy
from orchestration.engine.compiler import first_signature, item_signatures, stage_signature
from orchestration.engine.dispatch import Dispatcher
from orchestration.engine.stage_message import StageMessage
from orchestration.errors import RunNotFound
from orchestration.graph.resolve import Node, RunGraph
from orchestration.states import RUN_ACTIVE, RunStatus, State

if TYPE_CHECKING:
    from orchestration.engine.store import RunStore

log = logging.getLogger("chordflow.reaper")


class Reaper:
    def __init__(self, store: RunStore, dispatcher: Dispatcher, identity: str):
        self.store, self.dispatcher = store, dispatcher
        self.lock = store.fleet.reaper_lock(timeout_s=max(5.0, store.settings.lease_s))
        self.identity = identity
        self.entropy = AntiEntropy(store, dispatcher)
        self.primary: str | None = None
        self.paused_until = 0.0

    def tick(self) -> int:
        """Reap once if this process holds (or takes) the lock; returns how many messages it sent."""
        try:
            held = self.lock.reacquire() if self.lock.owned() else self.lock.acquire(blocking=False)
        except Exception:  # noqa: BLE001  lost the lock (expired and taken by another): try again next tick
            held = self.lock.acquire(blocking=False)
        if not held:
            return 0
        sent = self.unsent() + self.store.capacity.sweep_waiting(self.store.fleet.live_workers)
        if self._paused():
            return sent
        sent += self.expired_leases()
        if self.entropy.due():
            sent += self.entropy.sweep()
        return sent

    def release(self) -> None:
        """Give the lock up (a worker that stops): the next worker to tick takes it at once, where it
        would wait out the lock's TTL (a lease, 15 s by default) with nothing reaped meanwhile."""
        try:
            if self.lock.owned():
                self.lock.release()
        except Exception:  # expired, taken by another, or Redis away: its TTL ends it
            log.debug("could not release the reaper lock", exc_info=True)

    def _paused(self) -> bool:
        """After the primary changed (a failover, a restart), leases are judged only one lease later:
        the new primary's clock may run ahead of the old one's, and workers are reconnecting."""
        now = time.monotonic()
        primary = self.store.fleet.primary_identity()
        if self.primary is not None and primary != self.primary:
            log.warning("the Redis primary changed; judging leases again in %gs", self.store.settings.lease_s)
            self.paused_until = now + self.store.settings.lease_s
        self.primary = primary
        return now < self.paused_until

    def expired_leases(self, limit: int = 200) -> int:
        store = self.store
        now_ms = int(store.runs.server_time() * 1000)
        lease_ms = int(store.settings.lease_s * 1000)
        sent = 0
        for run_id, stage_id, item in store.transitions.expired_leases(now_ms, limit):
            state, lease_exp_ms, attempt = store.transitions.lease_state(run_id, stage_id, item)
            if state == State.RUNNING and lease_exp_ms > now_ms:
                continue
            if (
                state is None
                and item is not None
                and store.runs.stage_state(run_id, stage_id) == State.RUNNING
            ):
                # An item a chunk message claimed and never began (its worker died first): it is
                # sent on its own, as its first attempt.
                state, attempt = State.RUNNING, 0
            if state != State.RUNNING or store.runs.run_status(run_id) not in RUN_ACTIVE:
                store.transitions.release_lease(
                    run_id, stage_id, item
                )  # ended, or its run did (a revoked item)
                continue
            try:
                node = store.runs.graph(run_id).node(stage_id)
            except (RunNotFound, KeyError):
                store.transitions.release_lease(run_id, stage_id, item)
                continue
            # Look again after one more lease: if this send is lost too, it is sent again.
            store.transitions.defer_lease(run_id, stage_id, item, now_ms + lease_ms)
            log.warning(
                "lease of %s/%s item %s expired; sending attempt %s", run_id, stage_id, item, attempt + 1
            )
            self.dispatcher.send([stage_signature(StageMessage(run_id, stage_id, attempt + 1, item), node)])
            sent += 1
        return sent

    def unsent(self, limit: int = 200) -> int:
        store = self.store
        horizon = store.runs.server_time() - store.settings.outbox_grace_s
        sent = 0
        for run_id, stage_id in store.outbox.unsent(horizon, limit):
            state = store.runs.stage_state(run_id, stage_id)
            if state == State.QUEUED and store.runs.run_status(run_id) == RunStatus.PAUSED:
                continue  # a fan-out made ready while its run is paused: started after the resume
            if state in (State.QUEUED, State.RUNNING) and store.runs.run_status(run_id) in RUN_ACTIVE:
                try:
                    graph = store.runs.graph(run_id)
                except RunNotFound:
                    store.outbox.sent(run_id, [stage_id])
                    continue
                sent += self._resend(run_id, graph, graph.node(stage_id), state)
            store.outbox.sent(run_id, [stage_id])
        return sent

    def _resend(self, run_id: str, graph: RunGraph, node: Node, state: str) -> int:
        """Send what a dead dispatcher did not: a ready stage, or a started fan-out's first window."""
        if state == State.QUEUED:
            log.warning("stage %s/%s was ready but never sent; sending it", run_id, node.id)
            if node.fans_out:
                self.dispatcher.dispatch(run_id, graph, [node.id])
            else:
                self.dispatcher.send([first_signature(run_id, node)])
            return 1
        if not node.fans_out:
            return 0  # running: it was sent
        total = self.store.runs.items_total(run_id, node.id)
        window = min(total, node.max_concurrency or total)
        states = self.store.runs.item_states(run_id, node.id, range(window))
        unstarted = [i for i, item_state in enumerate(states) if item_state is None]
        if unstarted:
            log.warning(
                "fan-out %s/%s started but %d of its first items were never sent; sending them",
                run_id,
                node.id,
                len(unstarted),
            )
            self.dispatcher.send(item_signatures(run_id, node, unstarted))
        return len(unstarted)
