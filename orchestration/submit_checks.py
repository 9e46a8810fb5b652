"""What `submit` checks against the store before it writes anything: that every stage's type is
served on its queue (a queue no live worker serves at all is only a warning, QueueUnserved: an
autoscaler may be scaling from zero), and that an idempotency key reused names the same
submission (same pipeline, same variables), else InvalidInput (exit 2)."""

from __future__ import annotations

import json
import warnings
from typing import TYPE_CHECKING

from orchestration.engine.placement import QueueUnserved
from orchestration.engine.registry import BUILTIN_TYPES
from orchestration.errors import InvalidInput, InvalidPipeline, Problem, listing
from orchestration.graph.resolve import RunGraph

if TYPE_CHECKING:
    from orchestration.engine.store import RunStore


def check_same_submission(store: RunStore, key: str, run_id: str, graph: RunGraph) -> None:
    """InvalidInput (exit 2) when idempotency key `key` names a run of another pipeline or of
    other variables (`--set`) than `graph`: returning that run would silently ignore them."""
    [(pipeline, variables)] = store.runs.run_fields([run_id], ["pipeline", "variables"])
    if pipeline is None:
        return  # the run expired: its key goes with it
    theirs = json.loads(variables or "{}")
    ours = json.loads(json.dumps(graph.variables))
    if pipeline == graph.name and theirs == ours:
        return
    what = (
        f"pipeline '{pipeline}'"
        if pipeline != graph.name
        else "other values: "
        + ", ".join(
            f"{name}={theirs.get(name)!r} there, {ours.get(name)!r} here"
            for name in sorted(set(theirs) | set(ours))
            if theirs.get(name) != ours.get(name)
        )
    )
    raise InvalidInput(
        f"idempotency key '{key}' was already used for run {run_id} of {what}; "
        "a key names one submission: use another key for this one"
    )


def check_types(store: RunStore, graph: RunGraph) -> RunGraph:
    """Refuse types no live worker serves on the stage's queue; name types canonically. A queue
    no live worker serves at all is only warned of (QueueUnserved): an autoscaler may be
    starting its first worker, and the stage waits in Redis until one serves it."""
    canonical: dict[tuple[str, str], str] = {}
    for info in store.fleet.live_workers().values():
        names = {t["name"]: t["name"] for t in info.get("types", [])}
        names.update({t["ref"]: t["name"] for t in info.get("types", [])})
        for queue in info.get("queues", []):
            canonical.setdefault(("", queue), "")  # the queue is served, whatever its types
            for alias, name in names.items():
                canonical[(alias, queue)] = name
    problems, nodes = [], []
    unserved: dict[str, list[str]] = {}
    for node in graph.nodes:
        if ("", node.queue) not in canonical:
            unserved.setdefault(node.queue, []).append(node.id)
            nodes.append(node)
            continue
        name = canonical.get((node.type, node.queue))
        if name is None:
            served = sorted(
                {a for a, q in canonical if a and q == node.queue and "." not in a and ":" not in a}
                | (set(BUILTIN_TYPES) & {a for a, _ in canonical})
            )
            problems.append(
                Problem(
                    f"uses '{node.type}', which no live worker serves on queue '{node.queue}' "
                    f"(served there: {', '.join(served) or 'nothing'}). Register it with @stage in a module "
                    "the workers import (--import MODULE), or pass --no-check to queue it anyway",
                    node.id,
                )
            )
        nodes.append(node if name in (None, node.type) else node.model_copy(update={"type": name}))
    if problems:
        raise InvalidPipeline(problems)
    for queue, ids in unserved.items():
        warnings.warn(
            f"no live worker serves queue '{queue}': {listing(ids)} wait"
            f"{'s' if len(ids) == 1 else ''} there until one does (`chordflow worker --queues {queue}`)",
            QueueUnserved,
            stacklevel=3,
        )
    return graph.model_copy(update={"nodes": tuple(nodes)})
