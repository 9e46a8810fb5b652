"""The limits each stage of a plan starts under, from the file and this process's settings (no
Redis): `pool llm (4)`, `key deploy-prod`, `rate vendor.call 5/s`, `gpu 2`, `memory 64 GB`.
`plan` shows them; capacity_view.py adds the pools and keys full right now."""

from __future__ import annotations

from collections.abc import Mapping

from orchestration.engine.limits import gate_for
from orchestration.graph.resolve import Node, RunGraph
from orchestration.language.rates import PoolLimit, RateLimit, settings_limits
from orchestration.settings import Settings


def stage_limits(
    graph: RunGraph,
    node: Node,
    pools: Mapping[str, PoolLimit] | None = None,
    type_rates: Mapping[str, RateLimit] | None = None,
) -> list[str]:
    """The limits a stage starts under: `pool llm (4)`, `key deploy-prod`, `rate vendor.call 5/s`,
    `gpu 2`, `memory 64 GB` (the run's `max_parallel` is the run's). `pools`/`type_rates`: the
    settings' (CHORDFLOW_POOLS, CHORDFLOW_RATE_LIMITS), the tighter of them and the file's counting."""
    gate = gate_for(graph, node, "", pools, type_rates)
    if gate is None:
        return []
    out = []
    for count in gate.counts:
        if count.id.startswith("pool:"):
            out.append(f"{count.label} ({count.cap})")
        elif not count.id.startswith("run:"):
            out.append(count.label)
    out += [rate.label for rate in gate.rates]
    if gate.gpu:
        out.append(f"gpu {gate.gpu}")
    if gate.memory_gb:
        out.append(f"memory {gate.memory_gb:g} GB")
    return out


def settings_limits_or_none(settings: Settings) -> tuple[dict[str, PoolLimit], dict[str, RateLimit]]:
    """The pools and rate limits of the settings; none when a setting is malformed."""
    try:
        return settings_limits(settings)
    except ValueError:  # a malformed setting: the workers refuse to start on it, a plan shows the file's
        return {}, {}


def plan_limits(graph: RunGraph, settings: Settings) -> dict[str, list[str]]:
    """Stage id -> `stage_limits`, with this process's settings."""
    pools, rates = settings_limits_or_none(settings)
    return {node.id: stage_limits(graph, node, pools, rates) for node in graph.nodes}
