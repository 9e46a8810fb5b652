"""Run one attempt of one stage (or one fan-out item): the body of every stage task.

begin (fenced, leased) → condition → the stage function under a heartbeat →
commit exactly once (output, context, metrics, counter joins) → dispatch what
became ready. Exceptions become a retry (by the policy in force) or a failure
(with fallback if the stage has one). Nothing here trusts the message beyond
its ids: the stage's type, params and inputs come from the run's stored graph.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded

from orchestration import expressions, hooks
from orchestration.cache import cache_key
from orchestration.compiler import stage_signature
from orchestration.dispatch import Dispatcher, payload
from orchestration.errors import FailStage, OutputTooLarge, RetryStage, RunNotFound, StageTimeout
from orchestration.registry import Registry, StageType
from orchestration.resolve import Node, RunGraph
from orchestration.retries import countdown, is_retryable, resolve_policy
from orchestration.settings import Settings
from orchestration.store import RunStore

from .context import StageContext

log = logging.getLogger("chordflow.worker")
TRACEBACK_TAIL = 2000


@dataclass
class WorkerEnv:
    """What every stage task of this process shares."""

    settings: Settings
    store: RunStore
    dispatcher: Dispatcher
    registry: Registry
    hostname: str
    leases: LeaseKeeper
    fanout_inputs: dict[tuple[str, str], dict[str, Any]]


class LeaseKeeper:
    """One thread per process renews the lease of every attempt running in it.

    A stage whose lease is lost, or cannot be renewed for a whole lease period (Redis
    unreachable), is told to stop: another worker may hold it by now, and its commit
    would be refused anyway.
    """

    def __init__(self, store: RunStore, interval_s: float):
        self._store, self._interval = store, interval_s
        self._held: dict[tuple[str, str, int | None, str], tuple[StageContext, float]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def hold(self, run_id: str, stage_id: str, item: int | None, token: str, ctx: StageContext) -> LeaseKeeper:
        with self._lock:
            self._held[(run_id, stage_id, item, token)] = (ctx, time.monotonic())
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, daemon=True, name="chordflow-leases")
                self._thread.start()
        return self

    def release(self, run_id: str, stage_id: str, item: int | None, token: str) -> None:
        with self._lock:
            self._held.pop((run_id, stage_id, item, token), None)

    def _loop(self) -> None:
        while True:
            time.sleep(self._interval)
            with self._lock:
                held = list(self._held.items())
            for key, (ctx, last_renewed) in held:
                try:
                    renewed = self._store.renew(*key)
                except Exception:  # Redis unreachable: the lease lapses on Redis's clock
                    log.warning("could not renew the lease of %s/%s", key[0], key[1])
                    if time.monotonic() - last_renewed > self._store.settings.lease_s and self._holds(key):
                        log.warning("no renewal for a whole lease: stopping %s/%s", key[0], key[1])
                        ctx.cancel()
                        self.release(*key)
                    continue
                with self._lock:
                    if key not in self._held:  # the attempt ended while we renewed
                        continue
                    if renewed:
                        self._held[key] = (ctx, time.monotonic())
                        continue
                log.warning("lease lost for %s/%s; stopping the stage", key[0], key[1])
                ctx.cancel()
                self.release(*key)

    def _holds(self, key: tuple[str, str, int | None, str]) -> bool:
        with self._lock:
            return key in self._held


def error_record(exc: BaseException, attempt: int, retryable: bool) -> dict[str, Any]:
    record: dict[str, Any] = {
        "type": type(exc).__name__, "message": str(exc)[:2000], "retryable": retryable, "attempt": attempt,
        "traceback": "".join(traceback.format_exception(exc))[-TRACEBACK_TAIL:],
    }
    if isinstance(exc, StageTimeout):
        record.update(timeout=True, exit_code=exc.returncode)
    elif getattr(exc, "returncode", None) is not None:
        record["exit_code"] = exc.returncode
    return record


def execute(env: WorkerEnv, stage_type: StageType, task_id: str, run_id: str, stage_id: str, attempt: int,
            item: int | None) -> str:
    """Run one delivery of a stage message; returns what happened, for the worker log."""
    store = env.store
    try:
        graph = store.graph(run_id)
        node = graph.node(stage_id)
    except (RunNotFound, KeyError):
        log.error("refusing %s: no stage %s in run %s", task_id, stage_id, run_id)
        return "refused: unknown run or stage"
    if env.registry.canonical(node.type) != stage_type.name:
        log.error("refusing %s: stage %s/%s is of type %r, not %r", task_id, run_id, stage_id, node.type,
                  stage_type.name)
        return "refused: type mismatch"
    # The inputs come back with the token; a fan-out item reuses what its process parsed already.
    cached_inputs = env.fanout_inputs.get((run_id, stage_id)) if item is not None else None
    read = [] if cached_inputs is not None else node.reads
    verdict, *rest = store.begin(run_id, stage_id, item, attempt, env.hostname, node.queue, task_id,
                                 payload(run_id, stage_id, attempt, item), read)
    if verdict not in ("run", "poison"):
        return f"{verdict}: {rest[0] if rest else ''}"
    token = str(rest[0])
    if cached_inputs is None:
        cached_inputs = {sid: json.loads(raw) for sid, raw in zip(read, rest[-1])}
        if item is not None:
            if len(env.fanout_inputs) > 64:
                env.fanout_inputs.clear()
            env.fanout_inputs[(run_id, stage_id)] = cached_inputs
    ctx = _context(env, graph, node, run_id, attempt, item, cached_inputs)
    event = {"run_id": run_id, "pipeline": graph.name, "stage_id": stage_id, "item": item, "attempt": attempt,
             "host": env.hostname, "queue": node.queue, "type": stage_type.name}
    if verdict == "run":
        hooks.emit("stage_start", event, graph.webhooks)
    if verdict == "poison":
        error = {"type": "PoisonMessage", "retryable": False, "attempt": attempt,
                 "message": f"the worker running this stage died {rest[1]} times; the message is quarantined"}
        _commit(env, graph, node, run_id, item, token, "failed", error=error, ctx=ctx,
                announce=("stage_error", {**event, "error": error, "will_retry": False}))
        return "poison"
    if node.when and item is None:
        try:
            go = expressions.evaluate(node.when, variables=graph.variables, outputs=ctx.inputs,
                                      context=store.context(run_id))
        except ValueError as exc:
            _commit(env, graph, node, run_id, item, token, "failed", ctx=ctx,
                    error={"type": "ConditionError", "message": str(exc), "retryable": False, "attempt": attempt})
            return "condition error"
        if not go:
            _commit(env, graph, node, run_id, item, token, "skipped", output_json="null", ctx=ctx,
                    announce=("stage_complete", {**event, "state": "skipped"}))
            return "skipped"
    cached_at = None
    if node.cache is not None and not graph.no_cache:
        cached_at = store.keys.cache(cache_key(stage_type.name, stage_type.version, node.params, ctx.inputs,
                                               ctx.item, node.run))
        hit = store.r.get(cached_at)
        if hit is not None:
            store.r.hset(store.keys.stage(run_id, stage_id), "cache", "hit")
            _commit(env, graph, node, run_id, item, token, "succeeded", output_json=hit, ctx=ctx,
                    announce=("stage_complete", {**event, "state": "succeeded", "cached": True}))
            return "cache hit"
    try:
        env.leases.hold(run_id, stage_id, item, token, ctx)
        try:
            result = stage_type.func(ctx, **node.params)
        finally:
            env.leases.release(run_id, stage_id, item, token)
        output_json = json.dumps(result, separators=(",", ":"))
        if len(output_json) > env.settings.output_cap_bytes:
            raise OutputTooLarge(run_id, stage_id, len(output_json), env.settings.output_cap_bytes)
    except SoftTimeLimitExceeded:
        exc = StageTimeout(f"stage '{stage_id}' ran past its timeout of {node.timeout_s:g}s", returncode=None)
        return _failed(env, stage_type, graph, node, run_id, item, attempt, token, exc, ctx, event)
    except Exception as exc:  # the stage's own failure: retry, fallback or fail, by policy
        if isinstance(exc, TypeError) and "JSON serializable" in str(exc):
            exc = FailStage(f"stage '{stage_id}' returned a value that is not JSON: {exc}")
        return _failed(env, stage_type, graph, node, run_id, item, attempt, token, exc, ctx, event)
    finally:
        store.append_logs(run_id, stage_id, ctx.log_lines)
    if cached_at is not None and node.cache is not None:
        store.r.set(cached_at, output_json, ex=max(1, int(node.cache.ttl)))
    _commit(env, graph, node, run_id, item, token, "succeeded", output_json=output_json, ctx=ctx,
            announce=("stage_complete", {**event, "state": "succeeded"}))
    return "succeeded"


def _context(env: WorkerEnv, graph: RunGraph, node: Node, run_id: str, attempt: int, item: int | None,
             outputs: dict[str, Any]) -> StageContext:
    inputs = {sid: outputs.get(sid) for sid in node.needs}
    item_value: Any = None
    matrix = None
    if item is not None:
        if node.matrix is not None:
            matrix = node.matrix[item]
            item_value = matrix
        else:
            item_value = outputs[node.for_each][item]
    return StageContext(env.store, run_id, node.id, attempt, inputs, graph.variables, item_value, item, matrix,
                        node.timeout_s, node.env, node.cwd, node.run)


def _failed(env: WorkerEnv, stage_type: StageType, graph: RunGraph, node: Node, run_id: str, item: int | None,
            attempt: int, token: str, exc: BaseException, ctx: StageContext, event: dict[str, Any]) -> str:
    policy = resolve_policy(stage_type.retry, node.retry_policy)
    if isinstance(exc, RetryStage):
        retryable = True
    elif isinstance(exc, (FailStage, OutputTooLarge)):
        retryable = False
    else:
        retryable = is_retryable(policy, type(exc))
    error = error_record(exc, attempt, retryable)
    if retryable and attempt < policy.max_attempts:
        delay = exc.delay_s if isinstance(exc, RetryStage) and exc.delay_s is not None else countdown(policy, attempt)
        park = delay > env.settings.delay_set_threshold_s
        message = payload(run_id, node.id, attempt + 1, item)
        if env.store.retry(run_id, node.id, item, token, error, attempt + 1, delay, park, message):
            if not park:
                env.dispatcher.send([stage_signature(run_id, node, attempt + 1, item, countdown=delay)])
            hooks.emit("stage_error", {**event, "error": error, "will_retry": True, "delay_s": delay},
                       graph.webhooks)
        return f"retrying in {delay:.2f}s"
    announce = ("stage_error", {**event, "error": error, "will_retry": False})
    if node.fallback is not None:
        try:
            output_json = json.dumps(_fallback_output(env, graph, node, run_id, ctx))
        except Exception as fallback_exc:
            error["fallback_error"] = f"{type(fallback_exc).__name__}: {fallback_exc}"
        else:
            _commit(env, graph, node, run_id, item, token, "fallback", output_json, error, ctx, announce)
            return "fallback"
    _commit(env, graph, node, run_id, item, token, "failed", error=error, ctx=ctx, announce=announce)
    return f"failed: {error['type']}"


def _fallback_output(env: WorkerEnv, graph: RunGraph, node: Node, run_id: str, ctx: StageContext) -> Any:
    """The output a fallback supplies: a constant, the last success's, or another stage type's."""
    fallback = node.fallback
    assert fallback is not None
    if fallback.last_success:
        return _last_success(env.store, graph, node.id, run_id)
    if fallback.uses is not None:
        other = env.registry.get(fallback.uses)
        if other is None:
            raise LookupError(f"fallback type '{fallback.uses}' is not registered in this worker")
        return other.func(ctx, **node.params)
    return fallback.output


def _last_success(store: RunStore, graph: RunGraph, stage_id: str, run_id: str) -> Any:
    for other in store.recent_runs(limit=200, pipeline=graph.name):
        if other != run_id and store.r.hget(store.keys.run(other), "status") == "succeeded":
            value = store.output(other, stage_id)
            if value is not None:
                return value
    return None


def _commit(env: WorkerEnv, graph: RunGraph, node: Node, run_id: str, item: int | None, token: str,
            outcome: str, output_json: str = "", error: dict[str, Any] | None = None,
            ctx: StageContext | None = None, announce: tuple[str, dict[str, Any]] | None = None) -> bool:
    """Commit the attempt, announce it to the hooks, then advance the run.

    False if a newer attempt holds the stage (this one's result is dropped, nothing announced).
    """
    dispatcher = env.dispatcher
    commit = env.store.finish(
        run_id, graph, node.id, item, token, outcome, output_json, error,
        context_writes=ctx.context.writes if ctx else (), metrics=ctx.metrics.values if ctx else None,
        children=dispatcher.children(run_id, graph, node.id),
        descendants=dispatcher.blocked_by(run_id, graph, node.id, outcome),
    )
    if commit.verdict in ("stale", "late"):
        log.warning("commit of %s/%s item %s refused (%s): a newer attempt holds it", run_id, node.id, item,
                    commit.verdict)
        return False
    if announce is not None:
        hooks.emit(announce[0], announce[1], graph.webhooks)
    dispatcher.advance(run_id, graph, commit, node.id)
    return True
