"""One attempt of one stage (or fan-out item), from its token to its one commit.

condition → cache → the stage function → exactly one commit: `succeed`, `skip` or `fail`
(which asks `retries.decide` for a retry, the fallback or the failure). A commit that Redis
refuses (out of memory, read-only) becomes the attempt's failure; when even that is refused,
the lease runs out and the reaper sends the stage again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import redis
from celery.exceptions import SoftTimeLimitExceeded

from orchestration.engine import durability, hooks
from orchestration.engine.cache import cache_key
from orchestration.engine.commit import CommitRequest, InPlace, InPlaceItem, RetryRequest
from orchestration.engine.compiler import stage_signature
from orchestration.engine.limits import Gate
from orchestration.engine.registry import StageType
from orchestration.engine.replies import BeginPoison, Commit, CommitVerdict, Holding, StartedHere
from orchestration.engine.retries import Verdict, decide, resolve_policy
from orchestration.engine.stage_message import StageMessage
from orchestration.engine.store import RunStore
from orchestration.errors import CommitRefused, FailStage, OutputTooLarge, RedisRefusedWrite, StageTimeout
from orchestration.graph.resolve import Node, RunGraph
from orchestration.states import RunStatus, State

from .context import StageContext
from .failures import error_record, refused_write, safe_text, terminating
from .livelog import remember_ending

if TYPE_CHECKING:
    from .execution import WorkerEnv

log = logging.getLogger("chordflow.worker")


def stage_event(env: WorkerEnv, graph: RunGraph, node: Node, stage_type: StageType, m: StageMessage) -> dict:
    """The fields every hook event of this attempt carries."""
    return {
        "run_id": m.run_id,
        "pipeline": graph.name,
        "stage_id": node.id,
        "item": m.item,
        "attempt": m.attempt,
        "host": env.hostname,
        "queue": node.queue,
        "type": stage_type.name,
    }


class Attempt:
    """One attempt of one stage (or item), from its token to its one commit.

    `succeed`, `skip` and `fail` are the only ways out, and each commits once through
    `_commit`; `fail` asks `retries.decide` what the failure leads to. Whatever the stage's body
    raises or does to its interpreter (SystemExit, KeyboardInterrupt, an exception whose __str__
    raises) ends in one of them; only a real process death is left to the lease (lease.py)."""

    def __init__(
        self,
        env: WorkerEnv,
        stage_type: StageType,
        graph: RunGraph,
        node: Node,
        message: StageMessage,
        token: str,
        ctx: StageContext,
        gate: Gate | None = None,
    ):
        self.env, self.stage_type, self.graph, self.node = env, stage_type, graph, node
        self.message, self.token, self.ctx = message, token, ctx
        self.run_id, self.item, self.attempt = message.run_id, message.item, message.attempt
        self.event = stage_event(env, graph, node, stage_type, message)
        # what the commit gives back of the stage's limits (engine/limits.py)
        self.release = (gate, env.capacity) if gate is not None else None
        self.cache_key: str | None = None
        self._logs_stored = False
        self.in_place: InPlace | InPlaceItem | None = None
        self.deadline = 0.0
        self.started_here: StartedHere | None = None

    def offer(self, in_place: InPlace | InPlaceItem | None, deadline: float = 0.0) -> None:
        """Offer the commit children this process could run next (workers/execution.py), until
        `deadline` (time.monotonic()), or the next item of its chunk; what it started is kept in
        `started_here`."""
        self.in_place, self.deadline = in_place, deadline

    def store_logs(self, outcome: str = "", error: dict[str, Any] | None = None) -> None:
        """Send the rest of the attempt's log lines (livelog.py) with its END marker, once: before its
        commit, so that whoever sees the stage (or the run) end also finds all of its logs. A quiet
        attempt sends nothing. The outcome is remembered for the task's state in Flower (app.py)."""
        if outcome:
            remember_ending(outcome, error)
        if self._logs_stored:
            return
        self._logs_stored = True
        ending: dict[str, Any] = {"outcome": outcome, "host": self.env.hostname}
        if error:
            ending["error"] = f"{error.get('type')}: {error.get('message', '')}"[:500]
        self.ctx.log_sink.close(ending)

    # -- the attempt ---------------------------------------------------------------------------
    def perform(self, begun: Holding) -> str:
        node, ctx, store = self.node, self.ctx, self.env.store
        if isinstance(begun, BeginPoison):
            error = {
                "type": "PoisonMessage",
                "retryable": False,
                "attempt": self.attempt,
                "message": f"the worker running this stage died {begun.crashes} times; the message is quarantined",
            }
            return self._end_failed(error)
        if node.when:
            from orchestration.language import expressions  # only a stage with a condition loads it
        if node.when and (self.item is None or expressions.reads_item(node.when)):
            try:
                go = expressions.evaluate(
                    node.when,
                    variables=self.graph.variables,
                    outputs=ctx.inputs,
                    context=store.runs.context(self.run_id),
                    matrix=ctx.matrix or None,
                    item=ctx.item,
                    max_steps=self.env.settings.condition_max_steps,
                )
            except ValueError as exc:
                return self.fail(FailStage(str(exc)), kind="ConditionError")
            if not go:
                return self.skip()
        if node.cache is not None and not self.graph.no_cache:
            self.cache_key = cache_key(
                self.stage_type.name, self.stage_type.version, node.params, ctx.inputs, ctx.item, node.run
            )
            hit = store.runs.cached_output(self.cache_key)
            if hit is not None:
                return self.succeed(hit, cached=True)
        try:
            result = self.stage_type.func(ctx, **node.params)
        except SoftTimeLimitExceeded:
            return self.fail(
                StageTimeout(
                    f"stage '{node.id}' ran past its timeout of {node.timeout_s:g}s", returncode=None
                )
            )
        except BaseException as exc:  # whatever the body raises (SystemExit too) is its failure
            if terminating():
                raise  # the pool's own SIGTERM handler (a revoke, a cold shutdown): the process ends
            return self.fail(exc)
        try:
            output_json = json.dumps(result, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError, RecursionError) as exc:
            return self.fail(FailStage(f"stage '{node.id}' returned a value that is not JSON: {exc}"))
        except BaseException as exc:  # noqa: BLE001  a returned object's own methods may raise anything
            return self.fail(exc)
        if len(output_json) > self.env.settings.output_cap_bytes:
            return self.fail(
                OutputTooLarge(self.run_id, node.id, len(output_json), self.env.settings.output_cap_bytes)
            )
        return self.succeed(output_json)

    # -- the ways out --------------------------------------------------------------------------
    def succeed(self, output_json: str, cached: bool = False) -> str:
        commit = self._commit(
            State.SUCCEEDED,
            output_json,
            cached=cached,
            announce=("stage_complete", {"state": State.SUCCEEDED, "cached": cached}),
        )
        if isinstance(commit, str):
            return commit
        return "cache hit" if cached else State.SUCCEEDED

    def skip(self) -> str:
        commit = self._commit(State.SKIPPED, "null", announce=("stage_complete", {"state": State.SKIPPED}))
        return commit if isinstance(commit, str) else State.SKIPPED

    def fail(self, exc: BaseException, kind: str | None = None) -> str:
        node = self.node
        policy = resolve_policy(self.stage_type.retry, node.retry_policy)
        decision = decide(
            policy, exc, self.attempt, has_fallback=node.fallback is not None, critical=node.critical
        )
        error = error_record(exc, self.attempt, decision.retryable)
        if kind:
            error["type"] = kind
        if decision.verdict is Verdict.RETRY:
            return self.retry(decision.delay_s, error)
        if decision.verdict is Verdict.FALLBACK:
            try:
                output_json = json.dumps(self._fallback_output(), separators=(",", ":"), allow_nan=False)
            except BaseException as fallback_exc:  # noqa: BLE001  the fallback's failure is the stage's
                error["fallback_error"] = f"{type(fallback_exc).__name__}: {safe_text(fallback_exc)}"
                # shown wherever the stage's error is (status, the run page): not only in the JSON
                error["message"] = f"{error['message']}; its fallback failed too: {error['fallback_error']}"
            else:
                commit = self._commit(State.FALLBACK, output_json, error, announce=self._error_event(error))
                return commit if isinstance(commit, str) else State.FALLBACK
        return self._end_failed(error)

    def retry(self, delay_s: float, error: dict[str, Any]) -> str:
        env, node = self.env, self.node
        park = delay_s > env.settings.delay_set_threshold_s
        announce = hooks.entry(
            "stage_error",
            {**self.event, "error": error, "will_retry": True, "delay_s": delay_s},
            self.graph.webhooks,
        )
        self.store_logs(State.RETRYING, error)
        request = RetryRequest(
            self.message, self.token, error, delay_s, park, [announce] if announce else [], self.release
        )
        try:
            reply = env.store.transitions.retry(request)
        except redis.RedisError as exc:
            return self._lost(exc)
        if reply.held and not park:
            again = StageMessage(self.run_id, node.id, self.attempt + 1, self.item)
            try:
                env.dispatcher.send([stage_signature(again, node, countdown=delay_s)])
            except Exception as exc:  # noqa: BLE001  the broker refused it: the delay set keeps it instead
                log.warning(
                    "retry of %s/%s not sent (%s); it waits in the delay set", self.run_id, node.id, exc
                )
                try:
                    env.store.outbox.delay(again.payload(), delay_s)
                except redis.RedisError:  # the reaper's anti-entropy sweep sends it (antientropy.py)
                    log.warning("retry of %s/%s left to the reaper", self.run_id, node.id)
        return f"retrying in {delay_s:.2f}s"

    def _end_failed(self, error: dict[str, Any]) -> str:
        """Commit the stage's failure; the commit script cascades it by the node's `critical` and
        the run's fail_fast, as `decide` said (FAIL or FAIL_AND_CASCADE)."""
        commit = self._commit(State.FAILED, "", error, announce=self._error_event(error))
        return commit if isinstance(commit, str) else f"{State.FAILED}: {error['type']}"

    def _error_event(self, error: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        return "stage_error", {"error": error, "will_retry": False}

    # -- the one commit ------------------------------------------------------------------------
    def _commit(
        self,
        outcome: State,
        output_json: str = "",
        error: dict[str, Any] | None = None,
        cached: bool = False,
        announce: tuple[str, dict[str, Any]] | None = None,
    ) -> Commit | str:
        """Commit this attempt; a str says why nothing was committed (for the worker log).

        A commit whose checks refuse what the attempt wrote, or that Redis refuses (out of
        memory, read-only), becomes this attempt's failure, decided by the policy like any other."""
        env, graph, node, ctx = self.env, self.graph, self.node, self.ctx
        notify = []
        if announce is not None:
            entry = hooks.entry(announce[0], {**self.event, **announce[1]}, graph.webhooks)
            if entry:
                notify.append(entry)
        self.store_logs("cache hit" if cached else str(outcome.value), error)
        request = CommitRequest(
            self.run_id,
            graph,
            node.id,
            outcome,
            item=self.item,
            token=self.token,
            output_json=output_json,
            error=error,
            cached=cached,
            context_writes=ctx.context.writes,
            metrics=ctx.metrics.values,
            cache_key=self.cache_key if outcome is State.SUCCEEDED and not cached else None,
            cache_ttl_s=node.cache.ttl if node.cache is not None else 0,
            notify=notify,
            run_hook=hooks.entry("run_complete", {"run_id": self.run_id}, graph.webhooks) is not None,
            release=self.release,
            in_place=self.in_place
            if isinstance(self.in_place, InPlace)
            and outcome is not State.FAILED
            and time.monotonic() < self.deadline
            else None,
            in_place_item=self.in_place
            if isinstance(self.in_place, InPlaceItem) and outcome is not State.FAILED
            else None,
        )
        try:
            request = env.dispatcher.plan(request)
            commit = self._acknowledged(request, env.store.transitions.finish(request))
        except redis.RedisError as exc:
            if not refused_write(exc) or (outcome is State.FAILED and error and error.get("commit_refused")):
                return self._lost(exc)
            return self._refused(RedisRefusedWrite(str(exc)))
        if commit.verdict is CommitVerdict.INVALID:
            return self._refused(CommitRefused(commit.reason))
        if commit.verdict in (CommitVerdict.STALE, CommitVerdict.LATE):
            log.warning(
                "commit of %s/%s item %s refused (%s): a newer attempt holds it",
                self.run_id,
                node.id,
                self.item,
                commit.verdict,
            )
            return f"{commit.verdict}: not committed"
        self.started_here = commit.in_place
        try:
            env.dispatcher.advance(self.run_id, graph, commit, node.id)
        except redis.RedisError as exc:  # committed; what it made ready is in the outbox for the reaper
            log.warning(
                "run %s: could not send what %s made ready (%s); the reaper will", self.run_id, node.id, exc
            )
        return commit

    def _acknowledged(self, request: CommitRequest, commit: Commit) -> Commit:
        """With CHORDFLOW_REPLICAS_ACK=N: the commit once enough replicas have it (N, or every replica
        attached, if more: durability.Replicas). Until then it is sent
        again with the same token, while the attempt keeps its lease (finish.lua answers ALREADY when
        it is in; on a new primary that missed it, it commits it afresh), for one lease at most."""
        got = commit.replication
        if got is None or not commit.committed:
            return commit
        deadline, pause = time.monotonic() + self.env.settings.lease_s, 0.05
        while not got.ok and time.monotonic() < deadline:
            time.sleep(pause)
            pause = min(2 * pause, 1.0)
            try:
                again = self.env.store.transitions.finish(request)
            except redis.RedisError as exc:  # a failover under way: ask again
                log.warning("commit of %s/%s sent again: %s", self.run_id, self.node.id, exc)
                continue
            if again.verdict is CommitVerdict.ALREADY:
                commit = replace(commit, replication=again.replication)
            elif again.committed:
                commit = again  # a new primary that had missed it: committed afresh
            else:
                log.warning(
                    "commit of %s/%s lost in a failover (%s)", self.run_id, self.node.id, again.verdict
                )
                return again
            got = commit.replication or got
        if not got.ok:
            log.warning(
                "commit of %s/%s item %s: %s of %d replicas confirmed it; not acknowledged",
                self.run_id,
                self.node.id,
                self.item,
                got.confirmed,
                got.required,
            )
            return commit
        output = request.output_json
        durability.record(
            self.env.settings,
            {
                "run": self.run_id,
                "stage": self.node.id,
                "item": self.item,
                "attempt": self.attempt,
                "token": self.token,
                "outcome": str(request.outcome),
                "output_hash": hashlib.sha256(output.encode()).hexdigest() if output else None,
            },
        )
        return commit

    def _refused(self, exc: BaseException) -> str:
        """The commit wrote nothing: fail the attempt (by policy), without its writes."""
        log.error("commit of %s/%s item %s refused: %s", self.run_id, self.node.id, self.item, exc)
        self.ctx.context.writes.clear()
        self.ctx.metrics.values.clear()
        self.cache_key = None
        node = self.node
        policy = resolve_policy(self.stage_type.retry, node.retry_policy)
        decision = decide(policy, exc, self.attempt, has_fallback=False, critical=node.critical)
        error = error_record(exc, self.attempt, decision.retryable)
        error["commit_refused"] = True
        if decision.verdict is Verdict.RETRY:
            return self.retry(decision.delay_s, error)
        return self._end_failed(error)

    def _lost(self, exc: BaseException) -> str:
        log.error(
            "stage %s/%s item %s: Redis refused even the failure's commit (%s); the lease will run out "
            "and the reaper will send the stage again",
            self.run_id,
            self.node.id,
            self.item,
            exc,
        )
        return f"not committed: {type(exc).__name__}"

    # -- fallback ------------------------------------------------------------------------------
    def _fallback_output(self) -> Any:
        """The output a fallback supplies: a constant, the last success's, or another stage type's."""
        fallback = self.node.fallback
        assert fallback is not None
        if fallback.last_success:
            found, value = _last_success(self.env.store, self.graph, self.node.id, self.run_id)
            if found:
                return value
            if "default" in fallback.model_fields_set:
                return fallback.default
            raise LookupError(
                f"fallback last_success: no earlier run of pipeline '{self.graph.name}' has an output of "
                f"stage '{self.node.id}' (give the fallback a default: {{last_success: true, default: VALUE}})"
            )
        if fallback.uses is not None:
            other = self.env.registry.get(fallback.uses)
            if other is None:
                raise LookupError(f"fallback type '{fallback.uses}' is not registered in this worker")
            return other.func(self.ctx, **(fallback.params or {}))
        return fallback.output


def _last_success(store: RunStore, graph: RunGraph, stage_id: str, run_id: str) -> tuple[bool, Any]:
    """(found, the output of `stage_id` in the newest earlier successful run of the pipeline)."""
    for other in store.runs.recent_runs(limit=200, pipeline=graph.name):
        if other != run_id and store.runs.run_status(other) == RunStatus.SUCCEEDED:
            value = store.runs.output(other, stage_id)
            if value is not None:
                return True, value
    return False, None
