"""What the hook sender does besides hooks: when a run ends it records the end for the pipeline and
its assets and submits the registered pipelines the success triggers; now and then it looks for
stale pipelines and puts a `pipeline_stale` event in the hooks outbox for their webhooks.

Triggers are served by the hook sender of every worker's main process (`hook_sender.py`), from
the `run_complete` event the run's last commit puts in the hooks outbox in the same atomic step
as the run's end. The outbox is read through a consumer group, so each end reaches one sender,
at least once: a sender that dies before acknowledging it leaves it to another. Each triggered
run is submitted under the idempotency key `trigger:<pipeline>:<upstream run id>`
(`dependencies.trigger_key`), so a second delivery finds the run the first one made: one run per
successful upstream run, however many workers (and senders) there are. A sender that died between
taking the key and writing the run leaves a key naming no run; the next delivery drops it and
submits (`records.release_orphan_key`).

A run's end reaches the outbox only when someone in the committing process listens for
`run_complete`; `announce_run_ends()` (called by every HookSender, so in every worker before it
forks its pool) registers a Python hook that does nothing but listen: one outbox entry per run end,
nothing per stage.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import redis

from orchestration.engine import hooks
from orchestration.engine.celeryconfig import client_app
from orchestration.engine.dependencies import (
    Registered,
    freshness_limit,
    pipeline_state,
    registry,
    run_extra,
    span,
    trigger_key,
    unmet,
)
from orchestration.engine.dispatch import Dispatcher
from orchestration.engine.store import RunStore, new_run_id
from orchestration.errors import ChordflowError
from orchestration.graph.resolve import resolve
from orchestration.language.options import Webhook
from orchestration.settings import Settings
from orchestration.states import RunStatus

if TYPE_CHECKING:
    from orchestration.language.spec import PipelineSpec

log = logging.getLogger("chordflow.pipelines")
STALE_CHECK_S = 15.0  # how often one hook sender of the fleet looks for stale pipelines


def _listen_for_run_ends(event: dict[str, Any]) -> None:
    """Listens for run_complete, so every run's end reaches the hooks outbox; the hook sender acts
    on it itself (`RunEnds`), and never calls this."""


def announce_run_ends() -> None:
    """Make every run's end reach the hooks outbox from this process and the processes it forks."""
    if _listen_for_run_ends not in hooks.registered("run_complete"):
        hooks.on_run_complete(_listen_for_run_ends)


def is_internal(fn: Any) -> bool:
    """Whether `fn` is the listener `announce_run_ends` registered (not a user's hook)."""
    return fn is _listen_for_run_ends


def submit_spec(
    store: RunStore,
    dispatcher: Dispatcher,
    spec: PipelineSpec,
    idempotency_key: str,
    registered: Mapping[str, Registered] | None = None,
    **origin: Any,
) -> tuple[str, bool]:
    """Submit `spec` as a trigger does: its dependencies checked (not met: a `skipped` run records
    why), under `idempotency_key`. Returns (run id, whether it was started now)."""
    graph = resolve(spec, store.settings)
    missing = unmet(store, spec, registered)
    if missing:
        reason = "dependencies not met: " + "; ".join(missing)
        run_id, _ = store.records.create_skipped_run(
            graph, new_run_id(), reason, idempotency_key, run_extra(spec, **origin)
        )
        log.warning("pipeline %s not started (run %s skipped): %s", spec.name, run_id, reason)
        return run_id, False
    run_id, created = store.runs.create_run(
        graph, idempotency_key=idempotency_key, extra=run_extra(spec, **origin)
    )
    if created:
        dispatcher.dispatch(run_id, graph, [n.id for n in graph.nodes if not n.needs])
    return run_id, created


class RunEnds:
    """The hook sender's part when a run ends: record it, and submit the pipelines it triggers."""

    def __init__(self, store: RunStore, settings: Settings):
        self.store, self.settings = store, settings
        self._dispatcher: Dispatcher | None = None
        self._stale_next = 0.0

    @property
    def dispatcher(self) -> Dispatcher:
        if self._dispatcher is None:
            self._dispatcher = Dispatcher(client_app(self.settings), self.store)
        return self._dispatcher

    def handle(self, event: Mapping[str, Any]) -> list[str]:
        """Record the end of the event's run; when it succeeded, submit what it triggers. Returns the
        triggered runs (started now, found from an earlier delivery, or skipped). A Redis error
        propagates, so the event stays in the outbox and is delivered again."""
        run_id, pipeline = str(event.get("run_id") or ""), str(event.get("pipeline") or "")
        if not run_id or not pipeline:
            return []
        self.store.records.record_run_end(run_id, pipeline)
        if event.get("status") != RunStatus.SUCCEEDED:
            return []
        downstream = self.store.records.triggered_by(pipeline)
        if not downstream:
            return []
        registered = registry(self.store)
        chained = self._chain_members(run_id)
        runs = []
        for name in downstream:
            entry = registered.get(name)
            if entry is None or pipeline not in {t.on_success_of for t in entry.spec.triggers}:
                continue  # the index is older than the entry
            if name in chained:
                log.info("run %s is part of a chain that runs %s itself: not triggered", run_id, name)
                continue
            try:
                runs.append(self.fire(entry.spec, run_id, pipeline, registered))
            except redis.RedisError:
                raise
            except (ChordflowError, ValueError) as exc:  # e.g. a queue this fleet no longer serves
                log.error(
                    "pipeline %s, triggered by run %s of %s, not submitted: %s", name, run_id, pipeline, exc
                )
        return runs

    def fire(
        self, spec: PipelineSpec, upstream_run: str, upstream: str, registered: Mapping[str, Registered]
    ) -> str:
        """Submit `spec` once for this successful run of `upstream`."""
        key = trigger_key(spec.name, upstream_run)
        existing = self.store.records.idempotent_run(key)
        if existing is not None:
            if self.store.runs.run_status(existing) is not None:
                return existing  # this end was delivered before
            self.store.records.release_orphan_key(key, existing)
        run_id, started = submit_spec(
            self.store,
            self.dispatcher,
            spec,
            key,
            registered,
            triggered_by=upstream_run,
            triggered_by_pipeline=upstream,
        )
        if started:
            log.info(
                "pipeline %s triggered by run %s of %s: run %s", spec.name, upstream_run, upstream, run_id
            )
        return run_id

    def _chain_members(self, run_id: str) -> set[str]:
        """The pipelines of the chain `run_id` is part of (a chain submits them itself)."""
        (chain_id,) = self.store.runs.run_fields([run_id], ["chain"])[0]
        chain = self.store.records.chain(chain_id) if chain_id else None
        return set(chain.get("pipelines") or ()) if chain else set()

    # -- stale pipelines ------------------------------------------------------------------------
    def check_stale(self, force: bool = False) -> list[str]:
        """Every STALE_CHECK_S (one sender of the fleet at a time): put a pipeline_stale event in the
        hooks outbox for each registered pipeline that became stale since its last success; once
        per staleness. Returns the pipelines alerted."""
        if not force and time.monotonic() < self._stale_next:
            return []
        self._stale_next = time.monotonic() + STALE_CHECK_S
        lock = self.store.records.stale_lock(timeout_s=STALE_CHECK_S * 4)
        if not lock.acquire(blocking=False):
            return []
        try:
            return self._alert_stale()
        finally:
            try:
                lock.release()
            except redis.exceptions.LockError:
                pass

    def _alert_stale(self) -> list[str]:
        registered = registry(self.store)
        alerted = self.store.records.stale_alerted()
        now = self.store.runs.server_time()
        sent, fresh = [], []
        for name, entry in registered.items():
            limit = freshness_limit(name, registered)
            if limit is None:
                continue
            last = pipeline_state(self.store, name).last_success
            since = last.at if last is not None else (entry.added_at or now)
            if now - since <= limit:
                if name in alerted:
                    fresh.append(name)
                continue
            about = last.run_id if last is not None else "never"
            if alerted.get(name) == about:
                continue
            did = f"last succeeded {span(now - last.at)} ago" if last is not None else "has never succeeded"
            self.store.records.alert_stale(
                name,
                about,
                {
                    "run_id": last.run_id if last is not None else "",
                    "pipeline": name,
                    "last_success_at": last.at if last is not None else None,
                    "age_s": round(now - since, 3),
                    "max_age_s": limit,
                    "message": f"pipeline '{name}' is stale: it {did}, more than its max_age of "
                    f"{span(limit)}",
                },
            )
            sent.append(name)
        self.store.records.forget_stale_alerts(fresh)
        return sent


def pipeline_webhooks(store: RunStore, name: str) -> tuple[Webhook, ...]:
    """The webhooks of registered pipeline `name` (none when it is not registered)."""
    entry = registry(store).get(name)
    return entry.spec.webhooks if entry is not None else ()


__all__ = ["STALE_CHECK_S", "RunEnds", "announce_run_ends", "is_internal", "pipeline_webhooks", "submit_spec"]
