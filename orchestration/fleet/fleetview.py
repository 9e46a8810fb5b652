"""What the live fleet adds to a plan: the retry policy in force and cache hits.

A stage's policy in force is its type's registered policy (published by the
workers that serve it) with the file's fields over it; a cached stage is a hit
when an output under its cache key exists. Without a reachable Redis, a plan
shows the file's policies and no cache column.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import redis

from orchestration.engine.cache import cache_key
from orchestration.engine.retries import resolve_policy
from orchestration.engine.store import RunStore
from orchestration.fleet.health import quick_client
from orchestration.graph.resolve import Node, RunGraph
from orchestration.language.options import RetryPolicy
from orchestration.settings import Settings


@dataclass
class FleetView:
    types: dict[str, dict[str, Any]] = field(default_factory=dict)  # name or module:function → description
    hits: dict[str, bool] = field(default_factory=dict)  # stage id → cache hit, for root stages

    def policy(self, node: Node) -> RetryPolicy:
        served = self.types.get(node.type)
        registered = RetryPolicy.model_validate(served["retry"]) if served and served.get("retry") else None
        return resolve_policy(registered, node.retry_policy)

    def cache(self, node: Node) -> str | None:
        if node.cache is None:
            return None
        if node.needs or node.fans_out:
            return "depends on inputs"
        if node.type not in self.types:
            return "unknown (no live worker serves the type)"
        return "hit" if self.hits.get(node.id) else "miss"


def fleet_view(settings: Settings, graph: RunGraph, timeout_s: float = 2.0) -> FleetView | None:
    """The live fleet's view of `graph`, or None when no Redis is configured or reachable."""
    if not settings.redis_url:
        return None
    client = quick_client(settings, timeout_s)
    try:
        store = RunStore(client, settings)
        view = FleetView()
        for info in store.fleet.live_workers().values():
            for described in info.get("types", []):
                view.types[described["name"]] = described
                view.types[described["ref"]] = described
        for node in graph.nodes:
            served = view.types.get(node.type)
            if node.cache is not None and not node.needs and not node.fans_out and served:
                key = cache_key(served["name"], served["version"], node.params, {}, None, node.run)
                view.hits[node.id] = bool(client.exists(store.keys.cache(key)))
        return view
    except redis.RedisError:
        return None
    finally:
        client.close()
