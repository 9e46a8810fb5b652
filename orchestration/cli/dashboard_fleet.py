"""What the fleet page's JSON endpoints answer (dashboard.py serves them): runs filtered by status,
pipeline and time, a page at a time; the registered pipelines with the links between them, their
freshness and last runs, and one pipeline's stage graph; the schedules with their next tick; the
live workers; and the health report. Everything is read-only; times are epoch seconds.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from graphlib import CycleError, TopologicalSorter
from typing import Any

import redis
from celery.schedules import BaseSchedule, crontab, schedule

from orchestration.cli.dashboard_data import RUN_NUMBERS, _number
from orchestration.cli.dashboard_http import BadRequest
from orchestration.engine.dependencies import registry
from orchestration.engine.store import RunStore
from orchestration.errors import ChordflowError, RunNotFound
from orchestration.fleet import health
from orchestration.fleet.pipelines import pipeline_rows
from orchestration.fleet.schedules import BEAT_MAX_INTERVAL_S, list_schedules, parse_cron, parse_every
from orchestration.graph.resolve import RunGraph, resolve
from orchestration.language.spec import PipelineSpec
from orchestration.settings import Settings
from orchestration.states import RunStatus

PAGE_DEFAULT, PAGE_MAX = 25, 200
SCAN_MAX = 5000  # run ids read per request at most while filtering by status (the page says so)
LAST_RUNS = 10  # runs shown per pipeline
RUN_FIELDS = ("run_id", "pipeline", "version", "status", "failed_stage")
STATUSES = frozenset(s.value for s in RunStatus)


# -- runs ------------------------------------------------------------------------------------------


def _epoch(query: Mapping[str, list[str]], name: str) -> float | None:
    raw = query.get(name, [""])[0].strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise BadRequest(f"{name} must be a time in epoch seconds, not {raw[:40]!r}") from None
    if not 0 <= value < 1e11:
        raise BadRequest(f"{name} must be a time in epoch seconds, not {raw[:40]!r}")
    return value


def _count(query: Mapping[str, list[str]], name: str, default: int, high: int, low: int = 0) -> int:
    raw = query.get(name, [str(default)])[0].strip() or str(default)
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 12 or not low <= int(raw) <= high:
        raise BadRequest(f"{name} must be a whole number from {low} to {high}, not {raw[:40]!r}")
    return int(raw)


def run_page(r: redis.Redis, store: RunStore, query: Mapping[str, list[str]]) -> dict[str, Any]:
    """Runs newest first, filtered by `status` (comma-separated), `pipeline`, `since`/`until`
    (epoch s of submission), `limit` per page, from position `offset` of the runs in that time
    range. `next` is the offset of the next page (None: no more); with a status filter at most
    SCAN_MAX runs are read per page (`scanned`), so a rare status may need a few pages."""
    statuses = {s.strip() for s in query.get("status", [""])[0].split(",") if s.strip()}
    unknown = sorted(statuses - STATUSES)
    if unknown:
        named = ", ".join(unknown)
        named = named if len(named) <= 80 else named[:80] + "…"
        raise BadRequest(f"status {named!r} is not one of {', '.join(sorted(STATUSES))}")
    pipeline = query.get("pipeline", [""])[0].strip() or None
    since, until = _epoch(query, "since"), _epoch(query, "until")
    limit = _count(query, "limit", PAGE_DEFAULT, PAGE_MAX, low=1)
    offset = _count(query, "offset", 0, 10**9)
    key = store.keys.pipeline_runs(pipeline) if pipeline else store.keys.runs()
    high = "+inf" if until is None else repr(until)
    low = "-inf" if since is None else repr(since)
    in_range = int(r.zcount(key, low, high))
    fields = [*RUN_FIELDS[1:], *RUN_NUMBERS]
    runs: list[dict[str, Any]] = []
    position, scanned = offset, 0
    while len(runs) < limit and scanned < SCAN_MAX and position < in_range:
        batch = min(SCAN_MAX - scanned, max(limit - len(runs), 200 if statuses else 0))
        ids = [str(i) for i in r.zrevrangebyscore(key, high, low, start=position, num=batch)]
        if not ids:
            break
        for run_id, values in zip(ids, store.runs.run_fields(ids, fields), strict=True):
            position += 1
            scanned += 1
            record = dict(zip(fields, values, strict=True))
            if record["status"] is None or (statuses and record["status"] not in statuses):
                continue  # expired since it was listed, or filtered out
            row: dict[str, Any] = {"run_id": run_id, **{k: record[k] for k in RUN_FIELDS[1:]}}
            row.update({k: _number(record[k]) for k in RUN_NUMBERS})
            runs.append(row)
            if len(runs) == limit:
                break
    return {
        "runs": runs,
        "offset": offset,
        "next": position if position < in_range else None,
        "in_range": in_range,
        "scanned": scanned,
    }


# -- pipelines ---------------------------------------------------------------------------------------


def _levels(names: list[str], ups: Mapping[str, list[str]]) -> dict[str, int]:
    """Each pipeline's column: one more than its furthest upstream (registration refuses cycles;
    should one be there anyway, every pipeline is put in column 0 rather than no page at all)."""
    order = TopologicalSorter({name: ups.get(name, []) for name in names})
    try:
        ranked = list(order.static_order())
    except CycleError:
        return dict.fromkeys(names, 0)
    levels: dict[str, int] = {}
    for name in ranked:
        levels[name] = max((levels[u] + 1 for u in ups.get(name, []) if u in levels), default=0)
    return levels


def _links(specs: Mapping[str, PipelineSpec]) -> list[dict[str, str]]:
    """Every link between pipelines: from the upstream to the pipeline that follows it."""
    links = []
    for name, spec in specs.items():
        links += [{"from": d.pipeline, "to": name, "kind": "depends_on"} for d in spec.depends_on]
        links += [{"from": t.on_success_of, "to": name, "kind": "triggers"} for t in spec.triggers]
        for req in spec.requires:
            makers = [p for p, other in specs.items() if req.asset in other.provides and p != name]
            links += [{"from": p, "to": name, "kind": f"requires {req.asset}"} for p in makers]
    return links


def last_runs(store: RunStore, pipeline: str, count: int = LAST_RUNS) -> list[dict[str, Any]]:
    ids = [str(i) for i in store.runs.recent_runs(count, pipeline)]
    rows = store.runs.run_fields(ids, ["status", "created_at", "finished_at"])
    return [
        {"run_id": i, "status": s, "created_at": _number(c), "finished_at": _number(f)}
        for i, (s, c, f) in zip(ids, rows, strict=True)
        if s is not None
    ]


def pipelines_view(store: RunStore, settings: Settings) -> dict[str, Any]:
    """Registered pipelines (and those with runs but not registered) with their freshness, unmet
    dependencies, schedules and last runs, and the links between them with a column each."""
    rows = {row.pipeline: {**row.as_dict(), "registered": True} for row in pipeline_rows(store, settings)}
    for name in store.runs.pipelines():
        rows.setdefault(name, {"pipeline": name, "registered": False, "freshness": "-", "unmet": []})
    specs = {name: r.spec for name, r in registry(store).items()}
    links = _links(specs)
    for link in links:  # a pipeline named by a link but neither registered nor run
        for end in (link["from"], link["to"]):
            rows.setdefault(end, {"pipeline": end, "registered": False, "freshness": "-", "unmet": []})
    ups: dict[str, list[str]] = {}
    for link in links:
        ups.setdefault(link["to"], []).append(link["from"])
    levels = _levels(sorted(rows), ups)
    pipelines = []
    for name in sorted(rows):
        row = rows[name]
        row["level"] = levels.get(name, 0)
        row["runs"] = last_runs(store, name)
        pipelines.append(row)
    return {"pipelines": pipelines, "links": links}


def pipeline_graph(store: RunStore, settings: Settings, name: str) -> dict[str, Any]:
    """One pipeline's stages (nodes, edges, levels): from its registered file when it has one, else
    from its newest run; with the state of each stage in its newest run. RunNotFound: neither."""
    newest = [str(i) for i in store.runs.recent_runs(1, name)]
    graph: RunGraph | None = None
    source = ""
    entry = registry(store).get(name)
    if entry is not None:
        try:
            graph, source = resolve(entry.spec, settings), "registered"
        except ChordflowError:
            graph = None  # it no longer resolves here: show what its newest run ran
    if graph is None and newest:
        graph, source = store.runs.graph(newest[0]), f"run {newest[0]}"
    if graph is None:
        raise RunNotFound(f"pipeline {name!r} (neither registered nor run)")
    states = store.runs.states(newest[0]) if newest else {}
    return {
        "pipeline": name,
        "source": source,
        "run_id": newest[0] if newest else None,
        "nodes": [
            {
                "id": n.id,
                "level": n.level,
                "needs": list(n.needs),
                "type": n.type,
                "queue": n.queue,
                "fans_out": n.fans_out,
                "state": states.get(n.id),
            }
            for n in graph.nodes
        ],
        "edges": [{"from": need, "to": n.id} for n in graph.nodes for need in n.needs],
    }


# -- schedules, workers, health ------------------------------------------------------------------------


def _when(text: str) -> BaseSchedule | None:
    """The schedule back from its description (`cron 0 2 * * *`, `every 5m`)."""
    kind, _, rest = text.partition(" ")
    try:
        return parse_cron(rest) if kind == "cron" else parse_every(rest) if kind == "every" else None
    except ChordflowError:
        return None


def next_tick(when: BaseSchedule, last_at: float | None, now: float) -> float:
    """When `when` fires next after its last firing at `last_at` (never fired: after `now`), from
    the cron or the interval itself, in epoch s (may be in the past when beat missed it)."""
    base = last_at if last_at is not None else now
    if isinstance(when, schedule):
        return base + when.run_every.total_seconds()
    assert isinstance(when, crontab)
    at = datetime.fromtimestamp(now, UTC)
    tab = crontab(
        minute=when._orig_minute,
        hour=when._orig_hour,
        day_of_month=when._orig_day_of_month,
        month_of_year=when._orig_month_of_year,
        day_of_week=when._orig_day_of_week,
        nowfun=lambda: at,
    )
    return now + tab.remaining_estimate(datetime.fromtimestamp(base, UTC)).total_seconds()


def schedules_view(store: RunStore, settings: Settings) -> dict[str, Any]:
    """Each schedule with its next tick computed from its cron or interval (not RedBeat's `due_at`,
    which is when beat means to look next), and `overdue` when beat should have fired it already."""
    now = store.runs.server_time()
    out = []
    for info in list_schedules(settings):
        row = info.as_dict()
        when = _when(info.when)
        row["next_at"] = row["in_s"] = None
        row["overdue"] = False
        if when is not None:
            at = next_tick(when, info.last_fired_at, now)
            if at < now - 2 * BEAT_MAX_INTERVAL_S:  # missed: is beat running?
                row["overdue"], row["missed_at"] = True, at
                at = next_tick(when, None, now)
            row["next_at"], row["in_s"] = at, max(0.0, at - now)
        out.append(row)
    return {"schedules": out, "now": now}


def workers_view(store: RunStore, settings: Settings) -> dict[str, Any]:
    """The live workers: queues, capacity (slots, GPUs, memory), machine, the types they serve and
    how old their heartbeat is."""
    now = store.runs.server_time()
    workers = []
    for host, info in sorted(store.fleet.live_workers().items()):
        seen = float(info.get("seen") or 0)
        workers.append(
            {
                "host": host,
                "queues": list(info.get("queues") or []),
                "capacity": info.get("capacity") or {},
                "machine": info.get("machine") or {},
                "types": sorted({t.get("name", "?") for t in info.get("types") or []}),
                "pid": info.get("pid"),
                "seen": seen,
                "age_s": round(max(0.0, now - seen), 3),
            }
        )
    return {"workers": workers, "ttl_s": settings.worker_ttl_s, "heartbeat_s": settings.heartbeat_s}


def health_view(settings: Settings) -> dict[str, Any]:
    """`chordflow health --json`: problems, warnings, queues, capacity, stale pipelines and assets."""
    return health.check(settings, timeout_s=max(0.5, settings.redis_timeout_s / 2)).as_dict()
