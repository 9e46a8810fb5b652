"""How long a run has left, and how long a plan takes, from the stages' estimates.

Both are one simulation (`finish_s`): stages start as soon as what they need has finished and
their limits let them (a pool, a concurrency key and the run's `max_parallel` each hold as many
stages as their cap; a rate starts one stage per interval), and each runs for its estimate. With
no limits this is the critical path of what is left; with them, stages queue for their slots as
the workers make them.

A stage's estimate is the median of its durations in recent succeeded runs of the pipeline
(fleet/history.py; the file's `estimate` otherwise, as `plan` has it). A running stage has left
its estimate times the part not done yet: the part done is what it reported through
`ctx.progress(done, total)`, or a fan-out's items done over its items, or else the time it has
run over its estimate. So a fan-out counts its items as fractions, and the ETA counts down
instead of extrapolating from the stages done so far.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from orchestration.engine.limits import gate_for
from orchestration.graph.resolve import Node, RunGraph
from orchestration.language.rates import PoolLimit, RateLimit
from orchestration.states import TERMINAL, State


@dataclass(frozen=True)
class Limits:
    """Per stage: the counts it holds while it runs (id, cap) and the rates it starts under
    (id, seconds between two starts)."""

    counts: dict[str, tuple[tuple[str, int], ...]] = field(default_factory=dict)
    rates: dict[str, tuple[tuple[str, float], ...]] = field(default_factory=dict)


def limits_of(
    graph: RunGraph,
    pools: Mapping[str, PoolLimit] | None = None,
    type_rates: Mapping[str, RateLimit] | None = None,
) -> Limits:
    """The limits of every stage of `graph` (engine/limits.gate_for, with this process's settings)."""
    out = Limits()
    for node in graph.nodes:
        gate = gate_for(graph, node, "", pools, type_rates)
        if gate is None:
            continue
        if gate.counts:
            out.counts[node.id] = tuple((c.id, c.cap) for c in gate.counts)
        if gate.rates:
            out.rates[node.id] = tuple((r.id, r.interval_ms / 1000) for r in gate.rates)
    return out


def finish_s(
    nodes: Sequence[Node],
    left_s: Mapping[str, float],
    running: Mapping[str, float],
    done: set[str],
    limits: Limits | None = None,
) -> float:
    """Seconds until every stage not in `done` has finished. `left_s`: each stage's time to run
    (for a running one, what is left of it); `running`: the running stages (id -> their time
    left), holding their limits' slots. Stages start in file order as they become ready."""
    limits = limits or Limits()
    needs = {n.id: [d for d in n.needs if d not in done] for n in nodes if n.id not in done}
    kids: dict[str, list[str]] = {sid: [] for sid in needs}
    for sid, listed in needs.items():
        for need in listed:
            kids.setdefault(need, []).append(sid)
    waiting = {sid: len(listed) for sid, listed in needs.items() if sid not in running}
    position = {n.id: i for i, n in enumerate(nodes)}
    held: dict[str, int] = {}
    next_start: dict[str, float] = {}
    ends: list[tuple[float, str]] = []
    for sid, left in running.items():
        for count, _ in limits.counts.get(sid, ()):
            held[count] = held.get(count, 0) + 1
        heapq.heappush(ends, (max(0.0, left), sid))
    ready = sorted((sid for sid, count in waiting.items() if count == 0), key=position.__getitem__)
    now = 0.0
    while ready or ends:
        blocked, soonest = [], None
        for sid in ready:
            counts = limits.counts.get(sid, ())
            if any(held.get(count, 0) >= cap for count, cap in counts):
                blocked.append(sid)
                continue
            rated = [next_start.get(rate, 0.0) for rate, _ in limits.rates.get(sid, ())]
            if rated and max(rated) > now:
                blocked.append(sid)
                soonest = max(rated) if soonest is None else min(soonest, max(rated))
                continue
            for count, _ in counts:
                held[count] = held.get(count, 0) + 1
            for rate, interval in limits.rates.get(sid, ()):
                next_start[rate] = now + interval
            heapq.heappush(ends, (now + max(0.0, left_s.get(sid, 0.0)), sid))
        ready = blocked
        if not ends and soonest is None:
            break  # what is left can never start (a cap of 0): count what could
        if ends and (soonest is None or ends[0][0] <= soonest):
            now, finished = heapq.heappop(ends)
            for count, _ in limits.counts.get(finished, ()):
                held[count] -= 1
            for kid in kids.get(finished, ()):
                if kid in waiting:
                    waiting[kid] -= 1
                    if waiting[kid] == 0:
                        ready.append(kid)
            ready.sort(key=position.__getitem__)
        elif soonest is not None:
            now = soonest
    return now


def makespan_s(graph: RunGraph, limits: Limits) -> float:
    """A whole run's estimated duration under `limits` (the plan's critical path without them)."""
    if not limits.counts and not limits.rates:
        return graph.makespan_s
    return finish_s(graph.nodes, {n.id: n.estimate_s for n in graph.nodes}, {}, set(), limits)


def part_done(stage: Mapping[str, Any]) -> float | None:
    """The part of a running stage that is done (0..1): its own `ctx.progress` (`progress`:
    {done, total}, Client.status), else a fan-out's items done over its items, else None."""
    own = stage.get("progress") or {}
    for done, total in (
        (own.get("done"), own.get("total")),
        (stage.get("items_done"), stage.get("items_total")),
    ):
        try:
            fraction = float(done) / float(total)  # type: ignore[arg-type]
        except (TypeError, ValueError, ZeroDivisionError):
            continue
        return min(1.0, max(0.0, fraction))
    return None


def remaining_s(
    graph: RunGraph,
    status: Mapping[str, Any],
    estimates: Mapping[str, float],
    now: float,
    limits: Limits | None = None,
) -> float | None:
    """Seconds a run has left (`status`: `runview.run_view`'s), None once it has ended."""
    stages: Mapping[str, Mapping[str, Any]] = status.get("stages", {})
    done = {sid for sid, s in stages.items() if s.get("state") in TERMINAL}
    if len(done) == len(graph.nodes):
        return None
    left: dict[str, float] = {}
    running: dict[str, float] = {}
    for node in graph.nodes:
        estimate = float(estimates.get(node.id, node.estimate_s))
        stage = stages.get(node.id, {})
        left[node.id] = estimate
        if stage.get("state") != State.RUNNING:
            continue
        fraction = part_done(stage)
        started = stage.get("started_at")
        ran = max(0.0, now - float(started)) if started is not None else 0.0
        if fraction:
            running[node.id] = estimate * (1.0 - fraction)
        else:
            running[node.id] = max(0.0, estimate - ran)
    return finish_s(graph.nodes, left, running, done, limits)
