"""The attempt's calls to Redis, typed: what begin, retry and finish are asked, and the one place
that lays each out as the KEYS and ARGV of its script (lua/begin.lua, lua/retry.lua,
lua/finish.lua, whose headers describe the same layout).

`CommitRequest` is everything a commit carries. An attempt (workers/attempt.py) and the dispatcher
(a stage decided outside any attempt: skipped, failed before it ran, an empty fan-out) both build
one, `Dispatcher.plan` adds what the commit may make ready (the children, their messages, the
stages a critical failure blocks), and `finish_call` turns it into the script's call. A new commit
field is a field here, a line in `finish_call`, and its use in finish.lua.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from orchestration.engine.keys import Keys, encode_member
from orchestration.engine.limits import Capacity, Gate, GateKeys, dumps, holder
from orchestration.engine.stage_message import StageMessage
from orchestration.graph.resolve import RunGraph
from orchestration.settings import Settings
from orchestration.states import State


@dataclass(frozen=True, slots=True)
class ScriptCall:
    """One script's KEYS and ARGV, and how to run it."""

    keys: list[str]
    args: list[Any]
    allow_oom: bool = False  # may run when Redis is at maxmemory (scripts.Script)
    gated: bool = False  # the variant with lua/_limits.lua


@dataclass(frozen=True, slots=True)
class BeginRequest:
    """Start one attempt of `message` (one stage, or one fan-out item) on this worker."""

    message: StageMessage
    host: str
    queue: str
    task_id: str
    read: Sequence[str] = ()  # the stages whose outputs come back with the token
    notify: Sequence[str] = ()  # hook entries (JSON) enqueued with the start
    gate: tuple[Gate, Capacity] | None = None  # the stage's limits and this worker's capacity


@dataclass(frozen=True, slots=True)
class RetryRequest:
    """A failed attempt that will be tried again after `delay_s`: as `attempt + 1` of `message`."""

    message: StageMessage  # the failed attempt's
    token: str
    error: Mapping[str, Any]
    delay_s: float
    park: bool  # its next message waits in the delay set (a long delay), not in a countdown
    notify: Sequence[str] = ()
    release: tuple[Gate, Capacity] | None = None  # the attempt's limits, given back


@dataclass(frozen=True, slots=True)
class InPlaceStage:
    """A child this worker could run itself (workers/execution.py): what its start reads and announces."""

    stage_id: str
    read: Sequence[str] = ()  # the stages whose outputs come back with its token
    notify: Sequence[str] = ()  # hook entries (JSON) enqueued with its start


@dataclass(frozen=True, slots=True)
class InPlace:
    """Run one of `stages` here if the commit makes it ready: the commit starts its attempt (as
    begin.lua would, on this worker: `host`, `queue`, `task_id`) instead of enqueueing its message.
    The first of them in this order that becomes ready is taken; the others are enqueued."""

    stages: Sequence[InPlaceStage]
    host: str
    queue: str
    task_id: str


@dataclass(frozen=True, slots=True)
class InPlaceItem:
    """Start `item` of the same fan-out stage for this worker to run next (the next item of its chunk
    message), if it never ran: the commit starts its attempt as begin.lua would."""

    item: int
    host: str
    queue: str
    task_id: str
    notify: Sequence[str] = ()  # hook entries (JSON) enqueued with its start


@dataclass(frozen=True, slots=True)
class CommitRequest:
    """The end of one attempt (or, with token '', of a stage decided outside any attempt)."""

    run_id: str
    graph: RunGraph
    stage_id: str
    outcome: State
    item: int | None = None
    token: str = ""
    output_json: str = ""
    error: Mapping[str, Any] | None = None
    cached: bool = False  # a cache hit
    context_writes: Sequence[tuple[str, str, str]] = ()  # (op, key, value): 's' set, 'i' add
    metrics: Mapping[str, float] = field(default_factory=dict)
    cache_key: str | None = None  # store the output under it, for `cache_ttl_s`
    cache_ttl_s: float = 0
    notify: Sequence[str] = ()  # hook entries (JSON) enqueued with the commit
    run_hook: bool = False  # enqueue run_complete when the commit ends the run
    release: tuple[Gate, Capacity] | None = None
    # what the commit may make ready, from the graph: `Dispatcher.plan` fills these in
    children: Sequence[str] = ()
    descendants: Sequence[str] = ()  # marked upstream_failed by a critical failure (no fail_fast)
    messages: Mapping[str, tuple[str, str, bool]] = field(default_factory=dict)  # child: (queue, text, front)
    next_message: tuple[str, str] | None = None  # (queue, template) of a windowed fan-out's next item
    in_place: InPlace | None = None  # a child this worker would run itself (workers/execution.py)
    in_place_item: InPlaceItem | None = None  # the next item of this worker's chunk, to start here

    @property
    def failing(self) -> bool:
        return self.outcome is State.FAILED


def begin_call(keys: Keys, settings: Settings, req: BeginRequest) -> ScriptCall:
    """begin.lua's call: KEYS 1 run, 2 states, 3 unit hash, 4 events, 5 parked, 6 leases, 7 outputs,
    8 hooks stream, 9 stage hash, then a gate's keys; ARGV 1 the JSON object A."""
    m = req.message
    args: dict[str, Any] = {
        "stage": m.stage_id,
        "item": m.item,
        "attempt": m.attempt,
        "host": req.host,
        "queue": req.queue,
        "task_id": req.task_id,
        "lease_ms": int(settings.lease_s * 1000),
        "max_crashes": settings.max_deliveries,
        "payload": m.payload(),
        "lease": encode_member(m.run_id, m.stage_id, m.item, lease=True),
        "reads": list(req.read),
        "notify": list(req.notify),
    }
    names = [
        keys.run(m.run_id),
        keys.states(m.run_id),
        keys.unit(m.run_id, m.stage_id, m.item),
        keys.events(m.run_id),
        keys.parked(m.run_id),
        keys.leases(),
        keys.outputs(m.run_id),
        keys.hooks(),
        keys.stage(m.run_id, m.stage_id),
    ]
    if req.gate is not None:
        extra = GateKeys(keys, len(names))
        args["gate"] = extra.admission(req.gate[0], req.gate[1], m.run_id, m.stage_id, m.item)
        names += extra.list
    return ScriptCall(names, [dumps(args)], allow_oom=True, gated=req.gate is not None)


def retry_call(keys: Keys, req: RetryRequest) -> ScriptCall:
    """retry.lua's call: KEYS 1 unit hash, 2 states, 3 events, 4 delayed, 5 leases, 6 hooks stream,
    then the released gate's keys; ARGV as retry.lua's header says."""
    m = req.message
    again = StageMessage(m.run_id, m.stage_id, m.attempt + 1, m.item)
    names = [
        keys.unit(m.run_id, m.stage_id, m.item),
        keys.states(m.run_id),
        keys.events(m.run_id),
        keys.delayed(),
        keys.leases(),
        keys.hooks(),
    ]
    given_back = ""
    if req.release is not None:
        extra = GateKeys(keys, len(names))
        member = holder(m.run_id, m.stage_id, m.item, req.token)
        given_back = dumps(extra.release(req.release[0], req.release[1], member, delayed=4))
        names += extra.list
    args = [
        m.stage_id,
        "" if m.item is None else m.item,
        req.token,
        json.dumps(req.error),
        again.attempt,
        int(req.delay_s * 1000),
        "1" if req.park else "0",
        again.payload(),
        encode_member(m.run_id, m.stage_id, m.item, lease=True),
        given_back,
        *req.notify,
    ]
    return ScriptCall(names, args, allow_oom=True, gated=req.release is not None)


def finish_call(keys: Keys, settings: Settings, req: CommitRequest) -> ScriptCall:
    """finish.lua's call. KEYS: 1 run, 2 states, 3 unit hash, 4 events, 5 outputs, 6 context,
    7 metrics, 8 pending, 9 stage hash, 10 leases, 11 outbox, 12 hooks stream, 13 cache entry,
    14 run ends stream, then
    the stage hash and items hash of each stage in `others`, then the broker queues the messages
    name (by number), then the stage hash of each `in_place` stage, then a released gate's keys.
    ARGV: 1 the JSON object A."""
    run_id, graph, stage_id = req.run_id, req.graph, req.stage_id
    node = graph.node(stage_id)
    others: list[str] = []
    if req.failing and node.critical:
        # the stages this commit may close besides its own: all (fail-fast) or what it blocks
        others = (
            [n.id for n in graph.nodes if n.id != stage_id]
            if graph.fail_fast
            else [sid for sid in req.descendants if sid != stage_id]
        )
    queues: list[str] = []

    def queue_no(name: str) -> int:  # 1-based, into the queue keys after the others' keys
        if name not in queues:
            queues.append(name)
        return queues.index(name) + 1

    args: dict[str, Any] = {
        "stage": stage_id,
        "item": req.item,
        "token": req.token,
        "outcome": str(req.outcome),
        "output": req.output_json,
        "error": json.dumps(req.error) if req.error else "",
        "context": [list(w) for w in req.context_writes],
        "metrics": [[name, repr(float(v))] for name, v in req.metrics.items()],
        "children": list(req.children),
        # children whose one need is this stage: its commit makes them ready without counting down
        "lone": [child for child in req.children if not graph.node(child).counted],
        "descendants": list(req.descendants),
        "others": others,
        "critical": node.critical,
        "fail_fast": graph.fail_fast,
        "lease": encode_member(run_id, stage_id, req.item, lease=True),
        "windowed": bool(node.max_concurrency),
        "run_id": run_id,
        "cache_ttl": req.cache_ttl_s if req.cache_key else 0,
        "cached": req.cached,
        "notify": list(req.notify),
        "run_hook": req.run_hook,
        "pipeline": graph.name,
        "fanout_cap": settings.fanout_output_cap_bytes if req.item is not None else 0,
        "messages": {child: [queue_no(q), text, front] for child, (q, text, front) in req.messages.items()},
        "next": [queue_no(req.next_message[0]), req.next_message[1]] if req.next_message else None,
    }
    names = [
        keys.run(run_id),
        keys.states(run_id),
        keys.unit(run_id, stage_id, req.item),
        keys.events(run_id),
        keys.outputs(run_id),
        keys.context(run_id),
        keys.metrics(run_id),
        keys.pending(run_id),
        keys.stage(run_id, stage_id),
        keys.leases(),
        keys.outbox(),
        keys.hooks(),
        keys.cache(req.cache_key) if req.cache_key else keys.run(run_id),
        keys.run_ends(run_id),
    ]
    for sid in others:
        names += [keys.stage(run_id, sid), keys.items(run_id, sid)]
    names += [keys.broker_queue(q) for q in queues]
    if req.in_place is not None and req.token:
        here = req.in_place
        stages = []
        for child in here.stages:
            names.append(keys.stage(run_id, child.stage_id))
            lease = encode_member(run_id, child.stage_id, None, lease=True)
            stages.append([child.stage_id, len(names), list(child.read), list(child.notify), lease])
        args["in_place"] = {
            "host": here.host,
            "queue": here.queue,
            "task_id": here.task_id,
            "lease_ms": int(settings.lease_s * 1000),
            "stages": stages,
        }
    if req.in_place_item is not None and req.token and req.item is not None:
        nxt = req.in_place_item
        args["in_place_item"] = {
            "item": nxt.item,
            "host": nxt.host,
            "queue": nxt.queue,
            "task_id": nxt.task_id,
            "lease_ms": int(settings.lease_s * 1000),
            "notify": list(nxt.notify),
            "lease": encode_member(run_id, stage_id, nxt.item, lease=True),
        }
    gated = req.release is not None and bool(req.token)
    if req.release is not None and req.token:
        extra = GateKeys(keys, len(names))
        member = holder(run_id, stage_id, req.item, req.token)
        args["release"] = extra.release(req.release[0], req.release[1], member)
        names += extra.list
    # A failure that writes nothing of its own may be committed at maxmemory, so the run ends.
    allow_oom = req.failing and not req.context_writes and not req.metrics
    return ScriptCall(names, [dumps(args)], allow_oom=allow_oom, gated=gated)


__all__ = [
    "BeginRequest",
    "CommitRequest",
    "InPlace",
    "InPlaceItem",
    "InPlaceStage",
    "RetryRequest",
    "ScriptCall",
    "begin_call",
    "finish_call",
    "retry_call",
]
