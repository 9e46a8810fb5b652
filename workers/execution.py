"""Run one attempt of one stage (or one fan-out item): the body of every stage task.

begin (fenced; the lease, lease.py, is held from here to the commit) → condition → cache →
the stage function → exactly one commit through an `Attempt` (attempt.py): `succeed`, `skip`
or `fail` (which asks `retries.decide` for a retry, the fallback or the
failure). Hooks are never called here: their events are enqueued by the commit
scripts and delivered by each worker's hook sender, off the attempt's path.

In place: a commit that makes a child ready may start the child's attempt itself, for this
process to run next, instead of enqueueing its message (a chain's next stage: no trip through
the queue, the consumer and the pool's pipe, and no begin of its own). Offered for a child on
the same queue, of a type this worker has, with no limits and no timeout (Celery's time limits
are the message's), and only until the message has kept the process `CHORDFLOW_IN_PLACE_S`:
a warm shutdown waits that long at most, and other messages get the process back. The items of
a chunk message go the same way: an item's commit starts the next item of the chunk.

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
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import redis

from orchestration.engine import hooks
from orchestration.engine.commit import BeginRequest, InPlace, InPlaceItem, InPlaceStage
from orchestration.engine.dispatch import Dispatcher
from orchestration.engine.limits import Capacity, Gate, gate_for, holds_keys
from orchestration.engine.registry import Registry, StageType
from orchestration.engine.replies import BeginPoison, BeginReply, BeginRun, Holding, StartedHere, inputs_of
from orchestration.engine.stage_message import StageMessage
from orchestration.engine.store import RunStore
from orchestration.errors import RunNotFound
from orchestration.graph.resolve import Node, RunGraph
from orchestration.language.rates import PoolLimit, RateLimit
from orchestration.settings import Settings

from .attempt import Attempt, stage_event
from .context import StageContext
from .lease import LeaseKeeper
from .outcome import InPlaceEvents

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
    in_place: dict[tuple[str, str], list[InPlaceStage]] = field(default_factory=dict)

    def gate(self, graph: RunGraph, node: Node, run_id: str) -> Gate | None:
        """The stage's limits (None for most stages), worked out once per run and stage."""
        key = (run_id, node.id)
        if key not in self.gates:
            if len(self.gates) > 256:
                self.gates.clear()
            self.gates[key] = gate_for(graph, node, run_id, self.pools, self.type_rates)
        return self.gates[key]

    def in_place_children(self, graph: RunGraph, node: Node, run_id: str) -> list[InPlaceStage]:
        """The children of `node` this process could run in place (see the module's docstring),
        those on the critical path first, with what starting each reads and announces; worked out
        once per run and stage."""
        key = (run_id, node.id)
        if key not in self.in_place:
            if len(self.in_place) > 256:
                self.in_place.clear()
            found: list[tuple[Node, StageType]] = []
            if not node.timeout_s:
                for sid in self.dispatcher.children(graph, node.id):
                    child = graph.node(sid)
                    child_type = self.registry.get(child.type)
                    if (
                        child_type is not None
                        and not child.fans_out
                        and not child.timeout_s
                        and child.queue == node.queue
                        and self.gate(graph, child, run_id) is None
                    ):
                        found.append((child, child_type))
            found.sort(key=lambda pair: not pair[0].on_critical_path)
            self.in_place[key] = [
                InPlaceStage(
                    child.id,
                    child.reads,
                    start_entries(self, graph, child, child_type, StageMessage(run_id, child.id)),
                )
                for child, child_type in found
            ]
        return self.in_place[key]


@dataclass(frozen=True, slots=True)
class Delivery:
    """What the message a stage task runs gives each attempt it runs: its task id, until when
    (time.monotonic()) a commit may start a child in place, and the next item of its chunk."""

    task_id: str
    deadline: float = 0.0
    following: int | None = None


def execute(
    env: WorkerEnv,
    stage_type: StageType,
    task_id: str,
    message: StageMessage,
    events: InPlaceEvents | None = None,
) -> str:
    """Run one delivery of a stage message, and the children its commits start in place; returns
    what happened, for the worker log.

    Never raises a Redis error into Celery: if Redis cannot be reached or refuses even a
    failure's commit, the attempt's lease expires and the reaper sends the stage again."""
    delivery = Delivery(task_id, time.monotonic() + env.settings.in_place_s if message.item is None else 0.0)
    outcome, here, graph = _guarded(message, _execute, env, stage_type, delivery, message)
    first, ran = outcome, 1
    while here is not None and graph is not None:
        node = graph.node(here.stage_id)
        child_type = env.registry.get(node.type)
        if child_type is None:  # never: offered only for a type this worker has (else its lease runs out)
            break
        child = StageMessage(message.run_id, node.id)
        inputs = {sid: json.loads(raw) for sid, raw in inputs_of(here.begun, node.reads).items()}
        if events is not None:  # Flower's task events, which no message of its own sends
            events.started(child_type, child)
        outcome, here, graph = _guarded(
            child, _attempt, env, child_type, delivery, graph, node, child, here.begun, inputs
        )
        if events is not None:
            events.ended(child, outcome)
        ran += 1
    # The task's own outcome is its message's stage's (Flower shows the others as their own tasks)
    return first if ran == 1 else f"{first}; then {ran - 1} stages in place, the last {outcome}"


def _guarded(
    message: StageMessage, attempt: Any, *args: Any
) -> tuple[str, StartedHere | None, RunGraph | None]:
    """`attempt(*args)`; a Redis error ends it (logged) as nothing committed."""
    try:
        return attempt(*args)
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
        return f"redis error: {type(exc).__name__}", None, None


def execute_chunk(env: WorkerEnv, stage_type: StageType, task_id: str, message: StageMessage) -> str:
    """Run the fan-out items of a chunk message (`message.items`) one after another, each its own
    attempt (token, lease, one commit) as if it had come alone: started by the commit of the item
    before it (in place) when that commit could, else by its own begin.

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
    here: StartedHere | None = None  # the item the last commit started for this process, in place
    try:
        for i, item in enumerate(items):
            env.leases.unclaim(run_id, stage_id, item)  # from here its own lease, or its commit
            following = items[i + 1] if i + 1 < len(items) else None
            if here is not None and here.stage_id != stage_id:
                here = None
            delivery = Delivery(task_id, following=following)
            outcome, here, _ = _guarded(
                message.one(item), _execute, env, stage_type, delivery, message.one(item), here
            )
            outcomes[outcome.split(":")[0]] += 1
    finally:
        env.leases.unclaim(run_id, stage_id, *items)
    return ", ".join(f"{n} {what}" for what, n in outcomes.items())


def _execute(
    env: WorkerEnv,
    stage_type: StageType,
    delivery: Delivery,
    message: StageMessage,
    started_here: StartedHere | None = None,
) -> tuple[str, StartedHere | None, RunGraph | None]:
    """Begin and run the attempt `message` names (begun already: `started_here`, by the commit of
    the item before it in its chunk): (what happened, the child, or the chunk's next item, its
    commit started in place, the run's graph)."""
    store, task_id = env.store, delivery.task_id
    run_id, stage_id, item = message.run_id, message.stage_id, message.item
    try:
        graph = store.runs.graph(run_id)
        node = graph.node(stage_id)
    except (RunNotFound, KeyError):
        log.error("refusing %s: no stage %s in run %s", task_id, stage_id, run_id)
        return "refused: unknown run or stage", None, None
    if env.registry.canonical(node.type) != stage_type.name:
        log.error(
            "refusing %s: stage %s/%s is of type %r, not %r",
            task_id,
            run_id,
            stage_id,
            node.type,
            stage_type.name,
        )
        return "refused: type mismatch", None, None
    # The inputs come back with the token; a fan-out item reuses what its process parsed already.
    cached_inputs = env.fanout_inputs.get((run_id, stage_id)) if item is not None else None
    read = [] if cached_inputs is not None else node.reads
    gate = env.gate(graph, node, run_id)
    begun: Holding | BeginReply
    if started_here is not None:  # an item of a chunk (no limits: chunk_size), begun by a commit
        begun = started_here.begun
        if cached_inputs is None:
            cached_inputs = store.runs.outputs(run_id, node.reads)
    else:
        request = BeginRequest(
            message,
            env.hostname,
            node.queue,
            task_id,
            read,
            start_entries(env, graph, node, stage_type, message),
            gate=(gate, env.capacity) if gate is not None else None,
        )
        begun = store.transitions.begin(request)
    if not isinstance(begun, BeginRun | BeginPoison):
        # waiting for its limits (the message waits in Redis), parked, a duplicate, or nothing to run
        return (
            f"{type(begun).__name__.removeprefix('Begin').lower()}: {getattr(begun, 'why', '')}",
            None,
            graph,
        )
    if cached_inputs is None:
        cached_inputs = {sid: json.loads(raw) for sid, raw in inputs_of(begun, read).items()}
        if item is not None:
            if len(env.fanout_inputs) > 64:
                env.fanout_inputs.clear()
            env.fanout_inputs[(run_id, stage_id)] = cached_inputs
    return _attempt(env, stage_type, delivery, graph, node, message, begun, cached_inputs)


def _attempt(
    env: WorkerEnv,
    stage_type: StageType,
    delivery: Delivery,
    graph: RunGraph,
    node: Node,
    message: StageMessage,
    begun: Holding,
    inputs: dict[str, Any],
) -> tuple[str, StartedHere | None, RunGraph]:
    """Run a begun attempt to its commit: (what happened, the child (or the chunk's next item) its
    commit started in place, the run's graph)."""
    run_id, stage_id, item = message.run_id, message.stage_id, message.item
    task_id, following = delivery.task_id, delivery.following
    gate = env.gate(graph, node, run_id)
    ctx = _context(env, graph, node, message, inputs)
    ctx.token = begun.token
    offer: InPlace | InPlaceItem | None = None
    if item is None and delivery.deadline:
        children = env.in_place_children(graph, node, run_id)
        if children:
            offer = InPlace(children, env.hostname, node.queue, task_id)
    elif following is not None and gate is None:
        entries = start_entries(env, graph, node, stage_type, message.one(following))
        offer = InPlaceItem(following, env.hostname, node.queue, task_id, entries)
    run = Attempt(env, stage_type, graph, node, message, begun.token, ctx, gate)
    run.offer(offer, delivery.deadline)
    # The lease is held from the token to the commit: nothing before the body (a condition,
    # a cache read) and nothing after it (the commit) can outlast it unnoticed.
    holds = holds_keys(env.store.keys, gate, env.capacity) if gate is not None else ()
    env.leases.hold(run_id, stage_id, item, begun.token, ctx, holds)
    try:
        if not begun.devices:
            return run.perform(begun), run.started_here, graph
        with visible_devices(ctx, begun.devices):
            return run.perform(begun), run.started_here, graph
    finally:
        env.leases.release(run_id, stage_id, item, begun.token)
        run.store_logs()  # if no commit stored them (a lost lease, Redis refusing everything)


def start_entries(
    env: WorkerEnv, graph: RunGraph, node: Node, stage_type: StageType, message: StageMessage
) -> list[str]:
    """The hook entries an attempt's start enqueues: its stage_start event, when anyone listens."""
    started = hooks.entry("stage_start", stage_event(env, graph, node, stage_type, message), graph.webhooks)
    return [started] if started else []


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
