"""`chordflow plan`: what a run would do (order, levels, queues, retries, limits, critical path,
estimated makespan), without running it. With a Redis configured, estimates come from history
(fleet/history.py) and the live fleet's view is added; without one, nothing touches the network
and neither Celery nor redis is imported."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.table import Table

from orchestration.cli import eta
from orchestration.cli._common import (
    EXIT_OK,
    console,
    json_option,
    load_spec,
    offline_command,
    pipeline_options,
    print_json,
    say,
    settings_from_env,
)
from orchestration.cli.files import describe_retry
from orchestration.cli.plan_limits import plan_limits, settings_limits_or_none, stage_limits
from orchestration.engine.retries import resolve_policy
from orchestration.fleet import history
from orchestration.graph import render
from orchestration.graph.resolve import Node, RunGraph, resolve
from orchestration.language.durations import format_duration
from orchestration.language.loader import gc_paused
from orchestration.language.options import RetryPolicy

if TYPE_CHECKING:  # the modules that talk to Redis are imported when a Redis is configured
    from orchestration.fleet.fleetview import FleetView


def _path_text(path: Sequence[str], shown: int = 12) -> str:
    if len(path) <= shown:
        return " → ".join(path)
    half = shown // 2
    return " → ".join([*path[:half], f"… {len(path) - shown} more …", *path[-half:]])


class _Policies:
    """Each stage's retry policy, its dump and its words, worked out once per distinct `retry`
    setting (the stages of a large plan share a few: the defaults', a named policy's)."""

    def __init__(self, fleet: FleetView | None):
        self.fleet = fleet
        self._seen: dict[tuple[str, str], tuple[RetryPolicy, dict[str, Any], str]] = {}

    def of(self, node: Node) -> tuple[RetryPolicy, dict[str, Any], str]:
        key = (node.type if self.fleet else "", repr(node.retry))  # the same settings, the same key
        if key not in self._seen:
            policy = self.fleet.policy(node) if self.fleet else resolve_policy(node.retry_policy)
            self._seen[key] = (policy, policy.model_dump(mode="json"), describe_retry(policy))
        return self._seen[key]


def plan_data(
    graph: RunGraph,
    fleet: FleetView | None = None,
    limits: dict[str, list[str]] | None = None,
    waits: dict[str, list[str]] | None = None,
    makespan_s: float | None = None,
) -> dict[str, Any]:
    """The `plan --json` document. `makespan_s`: with the limits (eta.makespan_s), else the
    critical path's. `limits`: stage id -> its limits (plan_limits.plan_limits; the
    file's by default); `waits`: stage id -> its pools and keys full now, None without a Redis."""
    limits = limits if limits is not None else {n.id: stage_limits(graph, n) for n in graph.nodes}
    stages = []
    policies = _Policies(fleet)
    for position, node in enumerate(graph.nodes, start=1):
        _, dumped, words = policies.of(node)
        stages.append(
            {
                "cache": fleet.cache(node) if fleet else ("configured" if node.cache else None),
                "position": position,
                "id": node.id,
                "type": node.type,
                "needs": list(node.needs),
                "queue": node.queue,
                "level": node.level,
                "on_critical_path": node.on_critical_path,
                "matrix_instances": len(node.matrix) if node.matrix is not None else None,
                "for_each": node.for_each,
                "max_concurrency": node.max_concurrency,
                "estimate_s": node.estimate_s,
                "timeout_s": node.timeout_s,
                "critical": node.critical,
                "retry": dumped,
                "retry_summary": words,
                "limits": limits[node.id],  # `pool llm (4)`, `key deploy-prod`, `gpu 2`, ...
                "waits": None if waits is None else waits.get(node.id, []),
            }
        )
    return {
        "pipeline": graph.name,
        "version": graph.version,
        "stages": stages,
        "critical_path": list(graph.critical_path),
        "makespan_s": graph.makespan_s if makespan_s is None else makespan_s,
        "critical_path_s": graph.makespan_s,
        "max_parallel": getattr(graph, "max_parallel", None),
    }


PLAIN_ROWS = 500  # past this many stages the table is plain aligned text: rich measures every cell


def plan_rows(
    graph: RunGraph,
    fleet: FleetView | None = None,
    limits: dict[str, list[str]] | None = None,
    waits: dict[str, list[str]] | None = None,
) -> tuple[list[str], list[tuple[str, ...]]]:
    """The plan table's headings and one row of cells per stage, in run order."""
    headings = [
        "#",
        "stage",
        "type",
        "needs",
        "queue",
        "retry",
        "timeout",
        "fan-out",
        "level",
        "critical path",
    ]
    show_cache = any(node.cache for node in graph.nodes)
    if show_cache:
        headings.append("cache")
    limits = limits if limits is not None else {n.id: stage_limits(graph, n) for n in graph.nodes}
    show_limits = any(limits.values())
    if show_limits:
        headings.append("limits")

    def needs(node: Node) -> str:
        shown = ", ".join(node.needs[:3])
        return shown + (f" +{len(node.needs) - 3}" if len(node.needs) > 3 else "")

    rows = []
    policies = _Policies(fleet)
    for position, node in enumerate(graph.nodes, start=1):
        cells = (
            str(position),
            node.id,
            node.type,
            needs(node),
            node.queue,
            policies.of(node)[2],
            format_duration(node.timeout_s) if node.timeout_s is not None else "-",
            render.fan_out_label(node) or "",
            str(node.level),
            "●" if node.on_critical_path else "",
        ) + (((fleet.cache(node) if fleet else "on" if node.cache else "") or "",) if show_cache else ())
        if show_limits:
            full = (waits or {}).get(node.id)
            cells += (", ".join(limits[node.id]) + (f"; waits: {', '.join(full)}" if full else ""),)
        rows.append(cells)
    return headings, rows


def plan_table(
    graph: RunGraph,
    fleet: FleetView | None = None,
    limits: dict[str, list[str]] | None = None,
    waits: dict[str, list[str]] | None = None,
) -> Table:
    """The plan as a rich table, the critical path in bold."""
    headings, rows = plan_rows(graph, fleet, limits, waits)
    # Text cells: rich would read `[...]` in a type or name as markup
    table = Table(
        title=render.term(f"{graph.name} {graph.version}: {len(graph.nodes)} stages"), title_justify="left"
    )
    for heading in headings:
        table.add_column(heading, justify="right" if heading in ("#", "level") else "left", overflow="fold")
    for node, cells in zip(graph.nodes, rows, strict=True):
        table.add_row(*map(render.term, cells), style="bold" if node.on_critical_path else None)
    return table


def plain_lines(title: str, headings: list[str], rows: list[tuple[str, ...]]) -> list[str]:
    """The same table as aligned plain text (a large plan: rich would take seconds to measure it)."""
    widths = [max(len(h), *map(len, column)) for h, column in zip(headings, zip(*rows), strict=True)]
    # "#" and "level" to the right, the rest to the left: one format for every row
    line = "  ".join(f"{{:{'>' if i in (0, 8) else '<'}{w}}}" for i, w in enumerate(widths)).format
    return [
        title,
        line(*headings).rstrip(),
        "  ".join("-" * w for w in widths),
        *(line(*r).rstrip() for r in rows),
    ]


@click.command()
@pipeline_options
@json_option
@offline_command  # a Redis, when configured, is read with short timeouts, its errors caught
def plan(file: Path, sets: tuple[str, ...], select: str | None, only: bool, as_json: bool) -> int:
    """Show what a run would do: order, levels, queues, retries, limits, critical path (a dry run).

    With a Redis URL configured, estimates come from the stage durations of recent runs, and a
    stage's pools and concurrency keys that are full right now show as `waits: pool llm 4/4`."""
    # A large plan is hundreds of thousands of fresh objects, none of them garbage, in a process
    # that ends with the command: the cycle collector would walk them again and again.
    with gc_paused():
        return _plan(file, sets, select, only, as_json)


def _plan(file: Path, sets: tuple[str, ...], select: str | None, only: bool, as_json: bool) -> int:
    settings = settings_from_env()
    spec = load_spec(file, sets, settings)
    graph = resolve(spec, settings, select, only, estimates=history.estimates(settings, spec.name))
    fleet, waits = None, None
    if settings.redis_url:
        from orchestration.cli.capacity_view import live_waits
        from orchestration.fleet.fleetview import fleet_view

        fleet = fleet_view(settings, graph)
        waits = live_waits(settings, graph) if fleet is not None else None  # pools and keys full now
    limits = plan_limits(graph, settings)
    makespan = eta.makespan_s(graph, eta.limits_of(graph, *settings_limits_or_none(settings)))
    if as_json:
        return print_json(plan_data(graph, fleet, limits, waits, makespan))
    if len(graph.nodes) > PLAIN_ROWS:
        headings, rows = plan_rows(graph, fleet, limits, waits)
        title = f"{graph.name} {graph.version}: {len(graph.nodes)} stages"
        click.echo("\n".join(render.terminal_safe(text) for text in plain_lines(title, headings, rows)))
    else:
        console.print(plan_table(graph, fleet, limits, waits))
    if max_parallel := getattr(graph, "max_parallel", None):
        say(f"max_parallel: at most {max_parallel} stages of a run at once")
    path = f"critical path: {_path_text(graph.critical_path)}"
    if makespan > graph.makespan_s + 1e-6:  # pools, keys, rates or max_parallel make stages queue
        path = f"with its limits; {format_duration(graph.makespan_s)} on the {path}"
    say(f"estimated makespan: {format_duration(makespan)} ({path})")
    return EXIT_OK


COMMANDS = (plan,)
