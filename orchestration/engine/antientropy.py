"""Anti-entropy: find the stages (and fan-out items) that wait for a message no one holds, and send
it again.

Every other repair follows a record: a lease (the reaper's expired leases), the outbox (stages made
ready, not confirmed sent), the delay set, a limit's waiting set. A few paths leave a unit `queued`
or `retrying` with none of them: a begin that Redis refused after the message was taken, a retry
whose countdown message could not be sent, a stage's message that a worker held in memory (from
its delivery to its begin, or through a retry's countdown: broker.py) when it was killed, and a
failover to a replica that missed the message. So the reaper looks,
every `settings.sweep_s`, at the active runs' units itself: a `queued` or `retrying` unit (or an
item of a running fan-out that never began) with no live lease, no outbox entry, no waiting entry,
and no message in its broker queue, in kombu's unacked hash (a worker older than broker.py's
held messages recorded stage messages there) or in the delay set,
is a suspect; one still a suspect `settings.sweep_grace_s` later is sent again. A duplicate is
harmless: `begin.lua` drops it. Queues too long to read in one sweep are not judged (their units
are taken as present), so the cost of a sweep stays bounded; it costs nothing per stage.

The same list backs the run's TTL: `expire_run` takes a run off it once its keys have their TTL, so
a run the sweep finds there ended lost that step (its process died, or `retry` persisted its keys
and then found nothing to reopen), and the sweep expires it.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import redis

from orchestration.engine.compiler import stage_signature
from orchestration.engine.keys import Keys, encode_member
from orchestration.engine.stage_message import MalformedMessage, StageMessage
from orchestration.errors import RunNotFound
from orchestration.graph.resolve import RunGraph
from orchestration.states import RUN_FINAL, RunStatus, State

log = logging.getLogger("chordflow.reaper")

UNACKED = "unacked"  # kombu's Redis transport: the messages its consumers hold
UNACKED_INDEX = "unacked_index"  # ... by when they were taken (epoch s)
PATIENCE = 4  # a stage labelled as waiting for its limits is sent again after this many graces
MAX_READ = 5000  # entries of one queue, of the unacked hash or of the delay set read in one sweep
RUNS_PER_SWEEP = 500

Unit = tuple[str, str, int | None]  # run, stage, item


@dataclass(frozen=True)
class Suspect:
    """A unit with no message anywhere: what to send when it stays so."""

    unit: Unit
    queue: str
    message: StageMessage | None  # None: a fan-out stage not started (the dispatcher starts it)
    waiting: bool = False  # labelled as waiting for its limits: its message should be in a waiting set

    def found_in(self, present: dict[Unit, int]) -> bool:
        """Its message, or a later attempt's, is somewhere a worker will take it from."""
        seen = present.get(self.unit)
        return seen is not None and seen >= (self.message.attempt if self.message else 1)


class MissingMessages:
    """The reads of the sweep: the run store's `missing` (`store.RunStore`), on its client."""

    def __init__(self, client: redis.Redis, keys: Keys):
        self._r, self.keys = client, keys

    def active_runs(self) -> list[str]:
        return [str(r) for r in self._r.zrange(self.keys.active_runs(), 0, RUNS_PER_SWEEP - 1)]

    def forget(self, run_ids: Iterable[str]) -> None:
        run_ids = list(run_ids)
        if run_ids:
            self._r.zrem(self.keys.active_runs(), *run_ids)

    def suspects(self, run_id: str, graph: RunGraph, now_ms: int, grace_ms: int) -> list[Suspect]:
        """The run's units with no lease, outbox entry or waiting entry (messages not yet looked for)."""
        k, r = self.keys, self._r
        states = r.hgetall(k.states(run_id))
        found: list[Suspect] = []
        for node in graph.nodes:
            state = states.get(node.id)
            if state in (State.QUEUED, State.RETRYING):
                if node.fans_out and state == State.QUEUED:
                    if r.zscore(k.outbox(), encode_member(run_id, node.id)) is None:
                        found.append(Suspect((run_id, node.id, None), node.queue, None))
                    continue
                fields = r.hmget(k.stage(run_id, node.id), "attempt", "retry_at", "waiting")
                message = self._message(run_id, node.id, None, state, fields, now_ms, grace_ms)
                if (
                    message is not None
                    and not self._leased(run_id, node.id, None, now_ms)
                    and r.zscore(k.outbox(), encode_member(run_id, node.id)) is None
                ):
                    found.append(Suspect((run_id, node.id, None), node.queue, message, bool(fields[2])))
            elif state == State.RUNNING and node.fans_out:
                found += self._items(run_id, node.id, node.queue, node.max_concurrency, now_ms, grace_ms)
        return found

    def _items(
        self, run_id: str, stage_id: str, queue: str, window: int | None, now_ms: int, grace_ms: int
    ) -> list[Suspect]:
        k = self.keys
        stage = self._r.hmget(k.stage(run_id, stage_id), "items_total", "next_item")
        total = int(stage[0] or 0)
        if total > MAX_READ:
            return []  # too many to judge in one sweep
        upto = min(total, int(stage[1] or 0)) if window else total
        items = self._r.hgetall(k.items(run_id, stage_id))
        found = []
        for i in range(upto):
            state = items.get(f"{i}:state")
            if state not in (None, State.RETRYING):
                continue
            fields = [items.get(f"{i}:attempt"), items.get(f"{i}:retry_at"), items.get(f"{i}:waiting")]
            message = self._message(run_id, stage_id, i, state or State.QUEUED, fields, now_ms, grace_ms)
            if message is not None and not self._leased(run_id, stage_id, i, now_ms):
                found.append(Suspect((run_id, stage_id, i), queue, message, bool(fields[2])))
        return found

    @staticmethod
    def _message(
        run_id: str,
        stage_id: str,
        item: int | None,
        state: str,
        fields: list[Any],
        now_ms: int,
        grace_ms: int,
    ) -> StageMessage | None:
        attempt, retry_at, _ = fields
        current = int(attempt or 0)
        if state == State.RETRYING:
            if retry_at and float(retry_at) * 1000 + grace_ms > now_ms:
                return None  # its retry is not due yet (a countdown message, or the delay set)
            return StageMessage(run_id, stage_id, current + 1, item)
        return StageMessage(run_id, stage_id, max(1, current), item)

    def _leased(self, run_id: str, stage_id: str, item: int | None, now_ms: int) -> bool:
        score = self._r.zscore(self.keys.leases(), encode_member(run_id, stage_id, item, lease=True))
        return score is not None and score > now_ms

    def present(self, queues: Iterable[str], held_since_s: float) -> dict[Unit, int] | None:
        """{unit: the highest attempt of its messages} in `queues`, in a consumer's hands since
        `held_since_s` (epoch s; a message a dead worker took stays in kombu's unacked hash for the
        visibility timeout, and must not hide the loss), or in the delay set; None when one of them
        is too long to read now (then nothing is judged missing)."""
        r = self._r
        envelopes: list[Any] = []
        for queue in set(queues):
            if r.llen(self.keys.broker_queue(queue)) > MAX_READ:
                return None
            envelopes += [_json(text) for text in r.lrange(self.keys.broker_queue(queue), 0, -1)]
        if r.hlen(UNACKED) > MAX_READ or r.zcard(self.keys.delayed()) > MAX_READ:
            return None
        recent = {str(tag) for tag in r.zrangebyscore(UNACKED_INDEX, held_since_s, "+inf")}
        for tag, raw in r.hgetall(UNACKED).items():  # tag: [message, exchange, routing key]
            held = _json(raw)
            if str(tag) in recent and isinstance(held, list) and held:
                envelopes.append(held[0])
        messages = [m for envelope in envelopes for m in _messages_of_envelope(envelope)]
        for payload in r.zrange(self.keys.delayed(), 0, -1):
            try:
                messages.append(StageMessage.from_payload(str(payload)))
            except MalformedMessage:
                continue
        found: dict[Unit, int] = {}
        for m in messages:
            for unit in (
                [(m.run_id, m.stage_id, i) for i in m.items]
                if m.count > 1
                else [(m.run_id, m.stage_id, m.item)]
            ):
                found[unit] = max(found.get(unit, 0), m.attempt)
        return found


def _json(text: Any) -> Any:
    try:
        return json.loads(text)
    except (ValueError, TypeError):
        return None


def _messages_of_envelope(envelope: Any) -> list[StageMessage]:
    try:
        body = envelope["body"]
        if (envelope.get("properties") or {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args, kwargs = json.loads(body)[:2]
        return [StageMessage.parse(args, kwargs)]
    except (ValueError, TypeError, KeyError, AttributeError, MalformedMessage):
        return []


class AntiEntropy:
    """The sweep, run by the reaper (which holds its lock): `sweep()` returns the units it sent."""

    def __init__(self, store: Any, dispatcher: Any):
        self.store, self.dispatcher = store, dispatcher
        self.first_seen: dict[Unit, float] = {}
        self.last = 0.0

    def due(self) -> bool:
        return time.monotonic() - self.last >= self.store.settings.sweep_s

    def sweep(self) -> int:
        self.last = time.monotonic()
        store, settings = self.store, self.store.settings
        reads: MissingMessages = store.missing
        now_ms = int(store.runs.server_time() * 1000)
        grace_ms = int(settings.sweep_grace_s * 1000)
        suspects: list[tuple[Suspect, RunGraph]] = []
        ended = []
        for run_id in reads.active_runs():
            status = store.runs.run_status(run_id)
            if status in RUN_FINAL:
                # still listed after its end: whoever ended it died before expiring it (expire_run
                # takes a run off the list), or `retry` found nothing to reopen
                self._expire(run_id)
                continue
            if status is None:
                ended.append(run_id)
                continue
            if status == RunStatus.PAUSED:
                continue
            graph = store.runs.graph(run_id)
            suspects += [(s, graph) for s in reads.suspects(run_id, graph, now_ms, grace_ms)]
        reads.forget(ended)
        held_since = now_ms / 1000 - settings.lease_s - settings.sweep_grace_s
        present = reads.present((s.queue for s, _ in suspects), held_since) if suspects else {}
        if present is None:
            return 0
        # a stage waiting for its limits has its message in a waiting set, which is not read here:
        # one labelled so for PATIENCE graces is sent again (begin parks it again if it must wait)
        missing = {s.unit: (s, g) for s, g in suspects if s.waiting or not s.found_in(present)}
        self.first_seen = {u: self.first_seen.get(u, self.last) for u in missing}
        sent = 0
        for unit, (suspect, graph) in missing.items():
            patience = settings.sweep_grace_s * (PATIENCE if suspect.waiting else 1)
            if self.last - self.first_seen[unit] < patience:
                continue
            self._send(suspect, graph)
            self.first_seen.pop(unit)
            sent += 1
        return sent

    def _expire(self, run_id: str) -> None:
        """Give an ended run's keys their TTL (and take it off the active runs)."""
        try:
            graph = self.store.runs.graph(run_id)
        except RunNotFound:  # its graph expired already: nothing of it to keep
            self.store.missing.forget([run_id])
            return
        self.store.runs.expire_run(run_id, graph)

    def _send(self, suspect: Suspect, graph: RunGraph) -> None:
        run_id, stage_id, item = suspect.unit
        log.warning(
            "%s/%s item %s waits for a message no one holds; sending it again", run_id, stage_id, item
        )
        if suspect.message is None:
            self.dispatcher.dispatch(run_id, graph, [stage_id])
            return
        self.dispatcher.send([stage_signature(suspect.message, graph.node(stage_id))])


__all__ = ["AntiEntropy", "MissingMessages", "Suspect"]
