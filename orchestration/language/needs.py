"""Which stages a stage waits for: its `needs`, or for order-based files its `order`."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def effective_needs(views: Iterable[Any]) -> dict[str, list[str]]:
    """Each enabled stage's dependencies, with order-based stages chained by `order`.

    A stage with `order` and no `needs` depends on every stage at the nearest lower
    `order` value; stages at the same order run in parallel. A disabled stage is
    dropped and its dependents inherit its dependencies, so the order it imposed stays.
    """
    views = [v for v in views if v.id is not None]
    orders = sorted({v.order for v in views if v.order is not None and v.enabled})
    by_order: dict[int, list[str]] = {}
    for v in views:
        if v.order is not None and v.enabled:
            by_order.setdefault(v.order, []).append(v.id)
    raw: dict[str, list[str]] = {}
    for v in views:
        if v.needs or v.order is None:
            raw[v.id] = list(v.needs)
        else:
            pos = orders.index(v.order) if v.order in orders else sum(o < v.order for o in orders)
            raw[v.id] = list(by_order[orders[pos - 1]]) if pos > 0 else []
    disabled = {v.id for v in views if not v.enabled}
    if not disabled:
        return raw

    def bypass(stage_id: str, seen: set[str]) -> list[str]:
        out: list[str] = []
        for need in raw.get(stage_id, []):
            if need in disabled:
                if need not in seen:
                    seen.add(need)
                    out.extend(bypass(need, seen))
            else:
                out.append(need)
        return out

    return {v.id: list(dict.fromkeys(bypass(v.id, set()))) for v in views if v.enabled}
