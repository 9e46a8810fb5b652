"""The run store's records of pipelines across runs: the registry of pipelines, each pipeline's
last run end and last success, the assets runs provided, runs that were not started (skipped),
chains of pipelines, the pipeline_stale alerts already sent, and each schedule's last firing.

`PipelineRecords` is the run store's `records` (`store.RunStore`). Every key comes from
`keys.Keys`. The registry and the trigger index change together (WATCH/MULTI); a run's end is
recorded by one script (`lua/record_end.lua`), idempotent and order-proof, as the hook sender
delivers at least once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import redis
from redis.lock import Lock

from orchestration.engine.hook_stream import HOOKS_MAXLEN
from orchestration.engine.keys import Keys
from orchestration.engine.scripts import source
from orchestration.graph.resolve import RunGraph
from orchestration.settings import Settings
from orchestration.states import RunStatus

SKIPPED = RunStatus.SKIPPED  # the status of a run that was recorded but not started (its dependencies)


class PipelineRecords:
    """Records across the runs of pipelines (see the module docstring)."""

    def __init__(self, client: redis.Redis, settings: Settings, keys: Keys):
        self._r: Any = client
        self.settings = settings
        self.keys = keys
        self._record_end: Any = None  # record_end.lua, registered when first run

    # -- the registry ----------------------------------------------------------------------------
    def register_pipeline(
        self,
        name: str,
        entry: Mapping[str, Any],
        triggers_on: Sequence[str],
        check: Callable[[dict[str, dict[str, Any]]], None] | None = None,
    ) -> bool:
        """Store (or replace) pipeline `name`'s entry, and index it under each pipeline whose success
        triggers it (`triggers_on`), dropping the index of its previous entry; returns whether it is new.

        `check(entries)` sees the whole registry as it is when the write commits and may raise to
        refuse it: the registry is WATCHed from that read to the write, so two registrations that
        each pass alone (A triggered by B, B by A) cannot both land; the loser re-reads and re-checks."""
        k = self.keys
        with self._r.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(k.registry())
                    entries = {n: _json(raw) for n, raw in pipe.hgetall(k.registry()).items()}
                    if check is not None:
                        check(entries)
                    old = entries.get(name) or {}
                    pipe.multi()
                    for upstream in old.get("triggers_on") or ():
                        pipe.srem(k.triggered_by(upstream), name)
                    for upstream in triggers_on:
                        pipe.sadd(k.triggered_by(upstream), name)
                    pipe.hset(k.registry(), name, json.dumps({**entry, "triggers_on": list(triggers_on)}))
                    pipe.execute()
                    return not old
                except redis.WatchError:
                    continue

    def unregister_pipeline(self, name: str) -> bool:
        """Forget pipeline `name` (its runs and records stay); False when it was not registered."""
        k = self.keys
        with self._r.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(k.registry())
                    raw = pipe.hget(k.registry(), name)
                    if raw is None:
                        pipe.unwatch()
                        return False
                    pipe.multi()
                    for upstream in _json(raw).get("triggers_on") or ():
                        pipe.srem(k.triggered_by(upstream), name)
                    pipe.hdel(k.registry(), name)
                    pipe.execute()
                    return True
                except redis.WatchError:
                    continue

    def registered_pipelines(self) -> dict[str, dict[str, Any]]:
        """Name -> entry ({spec, source, sets, added_at, origin, triggers_on}) of each pipeline."""
        return {name: _json(raw) for name, raw in self._r.hgetall(self.keys.registry()).items()}

    def registered_pipeline(self, name: str) -> dict[str, Any] | None:
        """The entry of registered pipeline `name`, or None."""
        raw = self._r.hget(self.keys.registry(), name)
        return _json(raw) if raw is not None else None

    def triggered_by(self, upstream: str) -> list[str]:
        """The registered pipelines a success of `upstream` triggers, sorted."""
        return sorted(self._r.smembers(self.keys.triggered_by(upstream)))

    # -- run ends and assets ---------------------------------------------------------------------
    def record_run_end(self, run_id: str, pipeline: str) -> bool:
        """Keep a finished run's end in its pipeline's state, and the assets it provided if it
        succeeded; idempotent. False when the run has not ended or is gone."""
        if self._record_end is None:
            self._record_end = self._r.register_script(source("record_end.lua"))
        k = self.keys
        return bool(
            self._record_end(keys=[k.run(run_id), k.pipeline_state(pipeline), k.assets()], args=[run_id])
        )

    def pipeline_state(self, name: str) -> dict[str, str]:
        """The kept last end of pipeline `name`: last_finished_{id,status,at}, last_success_{id,at}."""
        return self._r.hgetall(self.keys.pipeline_state(name))

    def asset_records(self) -> dict[str, dict[str, Any]]:
        """Asset -> {run_id, pipeline, at} of the last successful run that provided it."""
        return {asset: _json(raw) for asset, raw in self._r.hgetall(self.keys.assets()).items()}

    # -- runs that were not started ----------------------------------------------------------------
    def idempotent_run(self, key: str) -> str | None:
        """The run id submitted under idempotency key `key`, or None."""
        return self._r.get(self.keys.idempotency(key))

    def release_orphan_key(self, key: str, run_id: str) -> bool:
        """Drop idempotency key `key` if it still names `run_id` and that run does not exist: a
        submitter that died between taking the key and writing the run. True if it was dropped."""
        k = self.keys
        with self._r.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(k.idempotency(key), k.run(run_id))
                if pipe.get(k.idempotency(key)) != run_id or pipe.exists(k.run(run_id)):
                    pipe.unwatch()
                    return False
                pipe.multi()
                pipe.delete(k.idempotency(key))
                pipe.execute()
                return True
            except redis.WatchError:
                return False

    def create_skipped_run(
        self,
        graph: RunGraph,
        run_id: str,
        reason: str,
        idempotency_key: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> tuple[str, bool]:
        """Record a run that was not started (its dependencies were not met): status `skipped`, every
        stage skipped, `reason` kept, listed with the pipeline's runs, expiring like a finished run.
        Returns (run id, created); with an idempotency key already used, that key's run."""
        k = self.keys
        ttl = int(self.settings.run_ttl_s)
        if idempotency_key and not self._r.set(k.idempotency(idempotency_key), run_id, nx=True, ex=ttl):
            existing = self._r.get(k.idempotency(idempotency_key))
            if existing:
                return existing, False
        now = f"{time.time():.3f}"
        record = {
            "run_id": run_id,
            "pipeline": graph.name,
            "version": graph.version,
            "status": SKIPPED,
            "created_at": now,
            "finished_at": now,
            "remaining": 0,
            "total": len(graph.nodes),
            "reason": reason,
            **{key: str(value) for key, value in (extra or {}).items()},
        }
        pipe = self._r.pipeline(transaction=True)
        pipe.hset(k.run(run_id), mapping=record)
        pipe.set(k.graph(run_id), graph.model_dump_json(exclude_defaults=True), ex=ttl)
        pipe.hset(k.states(run_id), mapping={n.id: SKIPPED for n in graph.nodes})
        pipe.xadd(k.events(run_id), {"t": now, "kind": "run", "state": SKIPPED, "reason": reason})
        for key in (k.run(run_id), k.states(run_id), k.events(run_id)):
            pipe.expire(key, ttl)
        pipe.zadd(k.runs(), {run_id: float(now)})
        pipe.zadd(k.pipeline_runs(graph.name), {run_id: float(now)})
        pipe.execute()
        return run_id, True

    # -- chains of pipelines ---------------------------------------------------------------------
    def save_chain(self, chain_id: str, data: Mapping[str, Any], started_at: float) -> None:
        """Store chain `chain_id` (kept as long as a run), listed by its start."""
        pipe = self._r.pipeline(transaction=True)
        pipe.set(self.keys.chain(chain_id), json.dumps(data), ex=int(self.settings.run_ttl_s))
        pipe.zadd(self.keys.chains(), {chain_id: started_at})
        pipe.execute()

    def chain(self, chain_id: str) -> dict[str, Any] | None:
        """Chain `chain_id` as stored, or None."""
        raw = self._r.get(self.keys.chain(chain_id))
        return _json(raw) if raw is not None else None

    def recent_chains(self, limit: int = 20) -> list[str]:
        """The newest `limit` chain ids, newest first."""
        return self._r.zrevrange(self.keys.chains(), 0, limit - 1)

    # -- pipeline_stale alerts -------------------------------------------------------------------
    def stale_lock(self, timeout_s: float) -> Lock:
        """The lock of the one hook sender that looks for stale pipelines (not taken; never blocks)."""
        return Lock(self._r, self.keys.stale_lock(), timeout=timeout_s, blocking=False, thread_local=False)

    def stale_alerted(self) -> dict[str, str]:
        """Pipeline -> the last success its pipeline_stale event was sent for."""
        return self._r.hgetall(self.keys.stale_alerts())

    def alert_stale(self, pipeline: str, about: str, event: Mapping[str, Any]) -> None:
        """Put a pipeline_stale `event` in the hooks outbox and remember it was sent `about` this
        last success, together."""
        pipe = self._r.pipeline(transaction=True)
        pipe.hset(self.keys.stale_alerts(), pipeline, about)
        pipe.xadd(
            self.keys.hooks(),
            {"e": json.dumps({"kind": "pipeline_stale", **event}, default=str)},
            maxlen=HOOKS_MAXLEN,
            approximate=True,
        )
        pipe.execute()

    def forget_stale_alerts(self, pipelines: Sequence[str]) -> None:
        """Pipelines fresh again: their next staleness is alerted anew."""
        if pipelines:
            self._r.hdel(self.keys.stale_alerts(), *pipelines)

    # -- schedules -------------------------------------------------------------------------------
    def record_schedule_outcome(self, name: str, outcome: Mapping[str, Any]) -> None:
        """Keep what the last firing of schedule `name` did (tick, run_id or error, at)."""
        self._r.hset(self.keys.schedule_outcomes(), name, json.dumps(outcome))


def _json(raw: Any) -> dict[str, Any]:
    try:
        value = json.loads(raw) if raw else {}
    except (TypeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}
