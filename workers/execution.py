"""Run one attempt of one stage (or one fan-out item): the body of every stage task.

begin (fenced; the lease, lease.py, is held from here to the commit) → condition → cache →
the stage function → exactly one commit through an `Attempt` (attempt.py): `succeed`, `skip`
or `fail` (which asks `retries.decide` for a retry, the fallback or the
failure). Hooks are never called here: their events are enqueued by the commit
scripts and delivered by each worker's hook sender, off the attempt's path.

Redis refusing a write (out of memory, read-only) is a fault of the attempt,
never a crash: the attempt is committed as failed (or retried) with an error
that names it, and when even that is refused the lease runs out and the reaper
sends the stage again. Nothing here trusts the message beyond its ids: the
stage's type, params and inputs come from the run's stored graph.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import redis

from orchestration.engine import hooks
from orchestration.engine.commit import BeginRequest
from orchestration.engine.dispatch import Dispatcher
from orchestration.engine.limits import Capacity, Gate, gate_for, holds_keys
from orchestration.engine.registry import Registry, StageType
from orchestration.engine.replies import BeginPoison, BeginRun, inputs_of
from orchestration.engine.stage_message import StageMessage
from orchestration.engine.store import RunStore
from orchestration.errors import RunNotFound
from orchestration.graph.resolve import Node, RunGraph
from orchestration.language.rates import PoolLimit, RateLimit
from orchestration.settings import Settings

from .attempt import Attempt, stage_event
from .context import StageContext
from .lease import LeaseKeeper

log = logging.getLogger("chordflow.worker")


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
    capacity: Capacity
    pools: dict[str, PoolLimit] = field(default_factory=dict)  # this worker's settings (limits.py)
    type_rates: dict[str, RateLimit] = field(default_factory=dict)
    gates: dict[tuple[str, str], Gate | None] = field(default_factory=dict)

    def gate(self, graph: RunGraph, node: Node, run_id: str) -> Gate | None:
        """The stage's limits (None for most stages), worked out once per run and stage."""
        key = (run_id, node.id)
        if key not in self.gates:
            if len(self.gates) > 256:
                self.gates.clear()
            self.gates[key] = gate_for(graph, node, run_id, self.pools, self.type_rates)
        return self.gates[key]


def execute(env: WorkerEnv, stage_type: StageType, task_id: str, message: StageMessage) -> str:
    """Run one delivery of a stage message; returns what happened, for the worker log.

    Never raises a Redis error into Celery: if Redis cannot be reached or refuses even a
    failure's commit, the attempt's lease expires and the reaper sends the stage again."""
    try:
        return _execute(env, stage_type, task_id, message)
    except redis.RedisError as exc:
        log.error(
            "stage %s/%s item %s: Redis failed outside the stage (%s: %s); the lease will run out "
            "and the reaper will send it again",
            message.run_id,
            message.stage_id,
            message.item,
            type(exc).__name__,
            exc,
        )
        return f"redis error: {type(exc).__name__}"


def execute_chunk(env: WorkerEnv, stage_type: StageType, task_id: str, message: StageMessage) -> str:
    """Run the fan-out items of a chunk message (`message.items`) one after another, each its own
    attempt (begin, lease, one commit) as if it had come alone.

    Their leases are claimed first, and kept by the lease keeper until each item begins: if this
    worker dies before an item began, its claim runs out and the reaper sends it on its own."""
    run_id, stage_id, items = message.run_id, message.stage_id, list(message.items)
    try:
        env.store.transitions.claim(run_id, stage_id, items)
    except redis.RedisError as exc:
        log.warning(
            "could not claim items %s of %s/%s (%s); running them anyway", items, run_id, stage_id, exc
        )
    env.leases.claim(run_id, stage_id, items)
    outcomes: Counter[str] = Counter()
    try:
        for item in items:
            env.leases.unclaim(run_id, stage_id, item)  # from here its own lease, or its commit
            outcomes[execute(env, stage_type, task_id, message.one(item)).split(":")[0]] += 1
    finally:
        env.leases.unclaim(run_id, stage_id, *items)
    return ", ".join(f"{n} {what}" for what, n in outcomes.items())


def _execute(env: WorkerEnv, stage_type: StageType, task_id: str, message: StageMessage) -> str:
    store = env.store
    run_id, stage_id, item = message.run_id, message.stage_id, message.item
    try:
        graph = store.runs.graph(run_id)
        node = graph.node(stage_id)
    except (RunNotFound, KeyError):
        log.error("refusing %s: no stage %s in run %s", task_id, stage_id, run_id)
        return "refused: unknown run or stage"
    if env.registry.canonical(node.type) != stage_type.name:
        log.error(
            "refusing %s: stage %s/%s is of type %r, not %r",
            task_id,
            run_id,
            stage_id,
            node.type,
            stage_type.name,
        )
        return "refused: type mismatch"
    started = hooks.entry("stage_start", stage_event(env, graph, node, stage_type, message), graph.webhooks)
    # The inputs come back with the token; a fan-out item reuses what its process parsed already.
    cached_inputs = env.fanout_inputs.get((run_id, stage_id)) if item is not None else None
    read = [] if cached_inputs is not None else node.reads
    gate = env.gate(graph, node, run_id)
    request = BeginRequest(
        message,
        env.hostname,
        node.queue,
        task_id,
        read,
        [started] if started else [],
        gate=(gate, env.capacity) if gate is not None else None,
    )
    begun = store.transitions.begin(request)
    if not isinstance(begun, BeginRun | BeginPoison):
        # waiting for its limits (the message waits in Redis), parked, a duplicate, or nothing to run
        return f"{type(begun).__name__.removeprefix('Begin').lower()}: {getattr(begun, 'why', '')}"
    if cached_inputs is None:
        cached_inputs = {sid: json.loads(raw) for sid, raw in inputs_of(begun, read).items()}
        if item is not None:
            if len(env.fanout_inputs) > 64:
                env.fanout_inputs.clear()
            env.fanout_inputs[(run_id, stage_id)] = cached_inputs
    ctx = _context(env, graph, node, message, cached_inputs)
    ctx.token = begun.token
    run = Attempt(env, stage_type, graph, node, message, begun.token, ctx, gate)
    # The lease is held from the token to the commit: nothing before the body (a condition,
    # a cache read) and nothing after it (the commit) can outlast it unnoticed.
    holds = holds_keys(store.keys, gate, env.capacity) if gate is not None else ()
    env.leases.hold(run_id, stage_id, item, begun.token, ctx, holds)
    try:
        if not begun.devices:
            return run.perform(begun)
        with visible_devices(ctx, begun.devices):
            return run.perform(begun)
    finally:
        env.leases.release(run_id, stage_id, item, begun.token)
        run.store_logs()  # if no commit stored them (a lost lease, Redis refusing everything)


@contextmanager
def visible_devices(ctx: StageContext, devices: str) -> Iterator[None]:
    """The GPUs the stage was given: CUDA_VISIBLE_DEVICES in its environment (a shell stage's
    process, and this process while a Python stage runs: a prefork pool runs one stage at a time)
    and `ctx.gpus`."""
    ctx.gpus = [d for d in devices.split(",") if d]
    ctx.env["CUDA_VISIBLE_DEVICES"] = devices
    before = os.environ.get("CUDA_VISIBLE_DEVICES")
    os.environ["CUDA_VISIBLE_DEVICES"] = devices
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = before


def _context(
    env: WorkerEnv, graph: RunGraph, node: Node, message: StageMessage, outputs: dict[str, Any]
) -> StageContext:
    inputs = {sid: outputs.get(sid) for sid in node.needs}
    item = message.item
    item_value: Any = None
    matrix = None
    if item is not None:
        if node.matrix is not None:
            matrix = node.matrix[item]
            item_value = matrix
        else:
            item_value = outputs[node.for_each or ""][item]
    return StageContext(
        env.store,
        message.run_id,
        node.id,
        message.attempt,
        inputs,
        graph.variables,
        item_value,
        item,
        matrix,
        node.timeout_s,
        node.env,
        node.cwd,
        node.run,
    )
