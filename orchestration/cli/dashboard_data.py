"""What the run page's JSON endpoints answer (dashboard.py serves them): the run list, one run
with its graph, timeline and origin, a fan-out's items, and an attempt's log lines."""

from __future__ import annotations

import json
from typing import Any

from orchestration.api import Client
from orchestration.cli.capacity_view import state_label
from orchestration.cli.runview import run_view
from orchestration.engine.attempts import AttemptHistory
from orchestration.fleet.chains import chain_runs

DEFAULT_LIMIT, MAX_LIMIT = 50, 500
PREVIEW_CHARS = 400  # outputs and context can be up to the output cap each; the page shows a preview
RUN_NUMBERS = ("created_at", "started_at", "finished_at", "total", "remaining")
TIMELINE_BARS = 2000  # attempts drawn on the timeline at most (the newest)
LOG_PAGE = 2000  # log lines sent per request at most (the page asks again for the rest)


# -- data -------------------------------------------------------------------------------------


def _number(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None


def _preview(value: Any) -> str | None:
    if value is None:
        return None
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= PREVIEW_CHARS else text[:PREVIEW_CHARS] + "…"


def run_list(client: Client, limit: int = DEFAULT_LIMIT, pipeline: str | None = None) -> list[dict[str, Any]]:
    """The newest `limit` runs (of `pipeline`, if given) as small records; times in epoch seconds."""
    runs = []
    for record in client.runs(limit, pipeline):
        row: dict[str, Any] = {
            key: record.get(key) for key in ("run_id", "pipeline", "version", "status", "failed_stage")
        }
        row.update({key: _number(record.get(key)) for key in RUN_NUMBERS})
        runs.append(row)
    return runs


def run_detail(client: Client, run_id: str, history: AttemptHistory | None = None) -> dict[str, Any]:
    """The run (`runview.run_view`: each stage's attempts) with the DAG (nodes in topological order,
    edges, levels) and the timeline: every attempt of its stages and items, on its host.

    Outputs and the context are cut to a preview: the page polls this every second."""
    history = history or AttemptHistory()
    status = run_view(client, run_id, history=history)
    status["timeline"] = timeline(history)
    graph = client.store.runs.graph(run_id)
    for stage in status["stages"].values():
        stage["output"] = _preview(stage.get("output"))
        stage["state_label"] = state_label(stage)  # `waiting (pool llm 4/4)`, as `status` shows it
    status["context"] = _preview(status.get("context") or None)
    status["nodes"] = [
        {
            "id": n.id,
            "level": n.level,
            "needs": list(n.needs),
            "type": n.type,
            "queue": n.queue,
            "critical": n.critical,
            "on_critical_path": n.on_critical_path,
            "fans_out": n.fans_out,
        }
        for n in graph.nodes
    ]
    status["edges"] = [{"from": need, "to": n.id} for n in graph.nodes for need in n.needs]
    status["levels"] = {n.id: n.level for n in graph.nodes}
    status["origin"] = origin = client.origin(run_id)  # triggered_by, forced, chain, skipped
    if "chain" in origin:  # the chain's runs, listed together on the page
        status["chain"] = {"chain_id": origin["chain"], "runs": chain_runs(client, origin["chain"])}
    return status


def timeline(history: AttemptHistory) -> list[dict[str, Any]]:
    """Every attempt (the newest `TIMELINE_BARS`) as a bar: stage, item, attempt, host, start, end, outcome."""
    records = sorted(
        (r for r in history.all() if r.started_at is not None), key=lambda r: r.started_at or 0.0
    )
    return [
        {
            "stage": r.stage_id,
            "item": r.item,
            "attempt": r.attempt,
            "host": r.host,
            "started_at": r.started_at,
            "finished_at": r.finished_at,
            "outcome": r.outcome,
        }
        for r in records[-TIMELINE_BARS:]
    ]


def item_list(
    client: Client, run_id: str, stage_id: str, history: AttemptHistory | None = None
) -> dict[str, Any]:
    """A fan-out stage's items (state, attempt, host, times, error while current, attempts)."""
    client.store.runs.graph(run_id).node(stage_id)  # KeyError: no such stage
    view = run_view(client, run_id, items=True, history=history)
    return {"run_id": run_id, "stage": stage_id, "items": view["stages"][stage_id].get("items", [])}


def log_view(
    client: Client, run_id: str, stage_id: str, item: int | None, attempt: int | None, after: str | None
) -> dict[str, Any]:
    """The attempts of a stage that logged, and the lines of one of them (the given one, else the
    newest) after stream id `after`, at most `LOG_PAGE`."""
    client.store.runs.graph(run_id).node(stage_id)  # KeyError: no such stage
    infos = client.store.logs.attempt_log_index(run_id, [stage_id])[stage_id]
    listed = [i for i in infos if item is None or i.item == item]
    chosen = None
    if listed:
        chosen = next((i for i in listed if attempt is not None and i.attempt == attempt), None)
        chosen = chosen or (listed[-1] if attempt is None else None)
    lines: list[dict[str, Any]] = []
    trimmed = 0
    if chosen is not None:
        entries = client.store.logs.attempt_log(
            run_id, stage_id, chosen.item, chosen.attempt, after, count=LOG_PAGE
        )
        lines = [{"id": e.id, "t": e.t, "level": e.level, "text": e.text} for e in entries]
        if not after:
            kept = client.store.logs.attempt_log_lengths(run_id, [(stage_id, chosen.item, chosen.attempt)])[0]
            trimmed = max(0, chosen.sent - kept)
    return {
        "run_id": run_id,
        "stage": stage_id,
        "attempts": [
            {"item": i.item, "attempt": i.attempt, "ended": i.ended, "host": i.host, "outcome": i.outcome}
            for i in listed
        ],
        "item": chosen.item if chosen else item,
        "attempt": chosen.attempt if chosen else attempt,
        "lines": lines,
        "after": lines[-1]["id"] if lines else after,
        "trimmed": trimmed,
    }
