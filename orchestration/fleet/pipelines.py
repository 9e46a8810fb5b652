"""What `chordflow pipelines` and `chordflow assets` show: each registered pipeline's last run, last
success, freshness and dependencies, and each asset's last provision and freshness.

A pipeline's freshness limit is the smallest of its own `max_age` and the `max_age` of every
registered `depends_on` naming it: it is `stale` when its last success is older (or it never
succeeded), `fresh` when not, `-` with no limit. An asset's limit is the smallest of its
providers' `max_age` and the `max_age` of every `requires` naming it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from orchestration.engine.dependencies import (
    Registered,
    RunEnd,
    asset_freshness_limit,
    freshness_limit,
    last_provided,
    pipeline_state,
    providers,
    registry,
    unmet,
)
from orchestration.fleet.schedules import list_schedules
from orchestration.settings import Settings

if TYPE_CHECKING:
    from orchestration.engine.store import RunStore


@dataclass
class PipelineRow:
    pipeline: str
    origin: str
    source: str | None
    schedule: str | None  # `cron 0 19 * * *` / `every 5m` of its schedules
    last_run: dict[str, Any] | None  # run_id, status, at, age_s (and reason when skipped)
    last_success: dict[str, Any] | None  # run_id, at, age_s
    max_age_s: float | None  # the freshness limit
    freshness: str  # fresh | stale | -
    unmet: list[str]  # its own depends_on/requires not met now
    depends_on: list[str] = field(default_factory=list)
    requires: list[str] = field(default_factory=list)
    provides: list[str] = field(default_factory=list)
    triggered_by: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class AssetRow:
    asset: str
    provided_by: list[str]
    required_by: list[str]
    last: dict[str, Any] | None  # run_id, pipeline, at, age_s of the last provision
    max_age_s: float | None
    freshness: str  # fresh | stale | -

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _end(end: RunEnd | None, now: float, **more: Any) -> dict[str, Any] | None:
    if end is None:
        return None
    return {"run_id": end.run_id, "status": end.status, "at": end.at, "age_s": round(now - end.at, 3), **more}


def _freshness(limit: float | None, last: RunEnd | None, now: float) -> str:
    if limit is None:
        return "-"
    return "fresh" if last is not None and now - last.at <= limit else "stale"


def pipeline_rows(store: RunStore, settings: Settings, with_schedules: bool = True) -> list[PipelineRow]:
    """One row per registered pipeline, by name."""
    registered = registry(store)
    scheduled: dict[str, list[str]] = {}
    if with_schedules:
        for s in list_schedules(settings):
            scheduled.setdefault(s.pipeline, []).append(s.when)
    now = store.runs.server_time()
    rows = []
    for name, entry in registered.items():
        spec = entry.spec
        state = pipeline_state(store, name)
        limit = freshness_limit(name, registered)
        last = _end(state.last_run, now, reason=state.last_reason) if state.last_run else None
        rows.append(
            PipelineRow(
                pipeline=name,
                origin=entry.origin,
                source=entry.source,
                schedule=", ".join(scheduled[name]) if name in scheduled else None,
                last_run=last,
                last_success=_end(state.last_success, now),
                max_age_s=limit,
                freshness=_freshness(limit, state.last_success, now),
                unmet=unmet(store, spec, registered),
                depends_on=[d.pipeline for d in spec.depends_on],
                requires=[r.asset for r in spec.requires],
                provides=list(spec.provides),
                triggered_by=[t.on_success_of for t in spec.triggers],
            )
        )
    return rows


def asset_names(registered: Mapping[str, Registered], kept: Mapping[str, Any]) -> list[str]:
    """Every asset a registered pipeline provides or requires, or some run provided, sorted."""
    names = set(kept)
    for entry in registered.values():
        names.update(entry.spec.provides)
        names.update(r.asset for r in entry.spec.requires)
    return sorted(names)


def asset_rows(store: RunStore) -> list[AssetRow]:
    """One row per asset, by name."""
    registered = registry(store)
    kept = store.records.asset_records()
    now = store.runs.server_time()
    rows = []
    for asset in asset_names(registered, kept):
        last = last_provided(store, asset, registered, kept)
        limit = asset_freshness_limit(asset, registered)
        rows.append(
            AssetRow(
                asset=asset,
                provided_by=providers(asset, registered),
                required_by=[n for n, r in registered.items() if asset in {q.asset for q in r.spec.requires}],
                last=_end(last, now, pipeline=last.pipeline) if last is not None else None,
                max_age_s=limit,
                freshness=_freshness(limit, last, now),
            )
        )
    return rows


# -- for `chordflow health` ----------------------------------------------------------------------------


def registry_limits(store: RunStore) -> dict[str, tuple[float, float | None]]:
    """Registered pipeline -> (freshness limit, when it was registered), for those with a limit."""
    registered = registry(store)
    limits = {name: (freshness_limit(name, registered), r.added_at) for name, r in registered.items()}
    return {name: (limit, added) for name, (limit, added) in limits.items() if limit}


@dataclass
class AssetFreshness:
    asset: str
    max_age_s: float
    last_provided_at: float | None  # epoch s; None: never provided
    pipeline: str | None  # that provided it last
    run_id: str | None
    age_s: float  # since it was last provided, or since a registered pipeline first named it
    stale: bool


def stale_assets(store: RunStore, now: float) -> list[AssetFreshness]:
    """Each asset with a freshness limit and how old it is: stale when older, or when never provided
    for longer than that since a registered pipeline first named it."""
    registered = registry(store)
    kept = store.records.asset_records()
    out = []
    for asset in asset_names(registered, kept):
        limit = asset_freshness_limit(asset, registered)
        if not limit:
            continue
        last = last_provided(store, asset, registered, kept)
        named = [
            r.added_at
            for r in registered.values()
            if r.added_at and (asset in r.spec.provides or asset in {q.asset for q in r.spec.requires})
        ]
        since = last.at if last is not None else min(named, default=None)
        age = max(0.0, now - since) if since is not None else 0.0
        out.append(
            AssetFreshness(
                asset,
                limit,
                last.at if last else None,
                last.pipeline if last else None,
                last.run_id if last else None,
                age,
                age > limit,
            )
        )
    return out
