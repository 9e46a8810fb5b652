"""Commands on a pipeline file that need no Redis: validate, plan, graph, schema, templates, init.
(`graph RUN` draws a run instead, from the configured Redis.)"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import click
from rich.table import Table
from rich.text import Text

from orchestration.cli._common import (
    EXIT_FAILED,
    EXIT_OK,
    command,
    console,
    file_argument,
    json_option,
    load_graph,
    load_spec,
    only_option,
    pipeline_options,
    print_json,
    redis_settings,
    say,
    select_option,
    set_option,
    settings_from_env,
)
from orchestration.cli.capacity_view import live_waits, plan_limits, stage_limits
from orchestration.engine.registry import BUILTIN_TYPES, ENTRY_POINT_GROUP
from orchestration.engine.retries import resolve_policy
from orchestration.engine.store import RunStore, connect
from orchestration.fleet import history
from orchestration.fleet.fleetview import FleetView, fleet_view
from orchestration.graph import render
from orchestration.graph.resolve import Node, RunGraph, resolve
from orchestration.language.durations import format_duration
from orchestration.language.ids import check_run_id
from orchestration.language.options import Backoff, RetryPolicy
from orchestration.language.spec import PipelineSpec

# -- validate ---------------------------------------------------------------------------------


def unverified_types(spec: PipelineSpec) -> dict[str, list[str]]:
    """Stage type -> ids of the enabled stages using it, for types that are neither built in
    nor named by an installed `chordflow.stages` entry point. Never imports a user module."""
    known = set(BUILTIN_TYPES)
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        known.update((entry.name, entry.value))
    found: dict[str, list[str]] = {}
    for stage in spec.stages:
        if stage.enabled and stage.type_name not in known:
            found.setdefault(stage.type_name, []).append(stage.id)
    return found


@click.command()
@file_argument
@set_option
@json_option
@command
def validate(file: Path, sets: tuple[str, ...], as_json: bool) -> int:
    """Check a pipeline file and report every problem at once."""
    spec = load_spec(file, sets, settings_from_env())
    enabled, unverified = sum(s.enabled for s in spec.stages), unverified_types(spec)
    disabled = len(spec.stages) - enabled
    if as_json:
        return print_json(
            {
                "ok": True,
                "pipeline": spec.name,
                "version": spec.version,
                "stages": enabled,
                "disabled": disabled,
                "unverified_types": unverified,
            }
        )
    say(
        f"ok: {enabled} stages"
        + (f" ({disabled} disabled)" if disabled else "")
        + f" in {spec.name} {spec.version}"
    )
    if unverified:
        say(
            f"unverified stage types (not built in, no '{ENTRY_POINT_GROUP}' entry point installed here; "
            "submit checks them against the live workers):"
        )
        for type_name, ids in unverified.items():
            say(f"  {type_name}  ({', '.join(ids)})")
    return EXIT_OK


# -- plan -------------------------------------------------------------------------------------


def describe_retry(policy: RetryPolicy) -> str:
    """`3× exponential 2s→1m`, `2× fixed 5s`, or `none`."""
    if policy.max_attempts <= 1:
        return "none"
    delay = format_duration(policy.delay)
    if policy.backoff is Backoff.EXPONENTIAL and policy.max_delay is None:
        shape = f"{delay} ×{policy.multiplier:g}"
    elif policy.backoff is not Backoff.FIXED and policy.max_delay is not None:
        shape = f"{delay}→{format_duration(policy.max_delay)}"
    else:
        shape = delay
    text = f"{policy.max_attempts}× {policy.backoff.value} {shape}"
    text += " jitter" if policy.jitter else ""
    text += f" on {', '.join(policy.retry_on)}" if policy.retry_on else ""
    return text + (f" except {', '.join(policy.give_up_on)}" if policy.give_up_on else "")


def _path_text(path: Sequence[str], shown: int = 12) -> str:
    if len(path) <= shown:
        return " → ".join(path)
    half = shown // 2
    return " → ".join([*path[:half], f"… {len(path) - shown} more …", *path[-half:]])


def plan_data(
    graph: RunGraph,
    fleet: FleetView | None = None,
    limits: dict[str, list[str]] | None = None,
    waits: dict[str, list[str]] | None = None,
) -> dict[str, Any]:
    """The `plan --json` document. `limits`: stage id -> its limits (capacity_view.plan_limits; the
    file's by default); `waits`: stage id -> its pools and keys full now, None without a Redis."""
    limits = limits if limits is not None else {n.id: stage_limits(graph, n) for n in graph.nodes}
    stages = []
    for position, node in enumerate(graph.nodes, start=1):
        policy = fleet.policy(node) if fleet else resolve_policy(node.retry_policy)
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
                "retry": policy.model_dump(mode="json"),
                "retry_summary": describe_retry(policy),
                "limits": limits[node.id],  # `pool llm (4)`, `key deploy-prod`, `gpu 2`, ...
                "waits": None if waits is None else waits.get(node.id, []),
            }
        )
    return {
        "pipeline": graph.name,
        "version": graph.version,
        "stages": stages,
        "critical_path": list(graph.critical_path),
        "makespan_s": graph.makespan_s,
        "max_parallel": getattr(graph, "max_parallel", None),
    }


def plan_table(
    graph: RunGraph,
    fleet: FleetView | None = None,
    limits: dict[str, list[str]] | None = None,
    waits: dict[str, list[str]] | None = None,
) -> Table:
    # Text cells made terminal-safe: rich would read `[...]` in a type or name as markup, and a
    # name from a file may hold an escape sequence (shown as the visible text `\x1b[2J`)
    table = Table(
        title=render.term(f"{graph.name} {graph.version}: {len(graph.nodes)} stages"), title_justify="left"
    )
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
    if any(limits.values()):
        headings.append("limits")
    for heading in headings:
        table.add_column(heading, justify="right" if heading in ("#", "level") else "left", overflow="fold")

    def needs(node: Node) -> str:
        shown = ", ".join(node.needs[:3])
        return shown + (f" +{len(node.needs) - 3}" if len(node.needs) > 3 else "")

    for position, node in enumerate(graph.nodes, start=1):
        cells = (
            str(position),
            node.id,
            node.type,
            needs(node),
            node.queue,
            describe_retry(fleet.policy(node) if fleet else resolve_policy(node.retry_policy)),
            format_duration(node.timeout_s) if node.timeout_s is not None else "-",
            render.fan_out_label(node) or "",
            str(node.level),
            "●" if node.on_critical_path else "",
        ) + (((fleet.cache(node) if fleet else "on" if node.cache else "") or "",) if show_cache else ())
        if any(limits.values()):
            full = (waits or {}).get(node.id)
            cells += (", ".join(limits[node.id]) + (f"; waits: {', '.join(full)}" if full else ""),)
        table.add_row(*map(render.term, cells), style="bold" if node.on_critical_path else None)
    return table


@click.command()
@pipeline_options
@json_option
@command
def plan(file: Path, sets: tuple[str, ...], select: str | None, only: bool, as_json: bool) -> int:
    """Show what a run would do: order, levels, queues, retries, limits, critical path (a dry run).

    With a Redis URL configured, estimates come from the stage durations of recent runs, and a
    stage's pools and concurrency keys that are full right now show as `waits: pool llm 4/4`."""
    settings = settings_from_env()
    spec = load_spec(file, sets, settings)
    graph = resolve(spec, settings, select, only, estimates=history.estimates(settings, spec.name))
    fleet = fleet_view(settings, graph)
    limits = plan_limits(graph, settings)
    waits = live_waits(settings, graph) if fleet is not None else None  # pools and keys full now
    if as_json:
        return print_json(plan_data(graph, fleet, limits, waits))
    console.print(plan_table(graph, fleet, limits, waits))
    if max_parallel := getattr(graph, "max_parallel", None):
        say(f"max_parallel: at most {max_parallel} stages of a run at once")
    say(
        f"estimated makespan: {format_duration(graph.makespan_s)} "
        f"(critical path: {_path_text(graph.critical_path)})"
    )
    return EXIT_OK


# -- graph, schema, templates, init --------------------------------------------------------------

TEMPLATES = Path(__file__).parent / "templates"  # data files, not a package: the wheel ships them


def available_templates() -> dict[str, tuple[str, Path]]:
    """Template name -> (description, path); each `templates/NAME.yaml` starts `# NAME: description`."""
    found = {}
    for path in sorted(TEMPLATES.glob("*.yaml")):
        first = path.read_text(encoding="utf-8").split("\n", 1)[0]
        found[path.stem] = (first.removeprefix("#").strip().removeprefix(f"{path.stem}:").strip(), path)
    return found


def _run_graph(run_id: str) -> tuple[RunGraph, dict[str, str]]:
    """A run's graph and its stages' states, from the configured Redis."""
    check_run_id(run_id)
    settings = redis_settings()
    store = RunStore(connect(settings), settings)
    return store.graph(run_id), store.states(run_id)


@click.command("graph")
@click.argument("source", metavar="FILE|RUN")
@set_option
@select_option
@only_option
@click.option(
    "--format", "fmt", type=click.Choice(["mermaid", "dot", "svg"]), default="mermaid", show_default=True
)
@command
def graph_command(source: str, sets: tuple[str, ...], select: str | None, only: bool, fmt: str) -> int:
    """Print a pipeline's graph (FILE) or a run's, coloured by each stage's state (RUN), as Mermaid,
    Graphviz DOT or SVG. An argument that is no file is read as a run id."""
    states: dict[str, str] | None = None
    if Path(source).exists() or Path(source).suffix in (".yaml", ".yml", ".json"):
        graph = load_graph(Path(source), sets, select, only)
    else:
        if sets or select or only:
            raise click.UsageError("--set, --select and --only apply to a FILE, not to a run")
        graph, states = _run_graph(source)
    drawn = {"mermaid": render.to_mermaid, "dot": render.to_dot, "svg": render.to_svg}[fmt](graph, states)
    click.echo(drawn, nl=False)
    return EXIT_OK


@click.command()
@command
def schema() -> int:
    """Print the JSON Schema of the pipeline file."""
    return print_json(PipelineSpec.model_json_schema())


@click.command("templates")
@json_option
@command
def templates_command(as_json: bool) -> int:
    """List the templates `init` can write."""
    found = available_templates()
    if as_json:
        return print_json(
            [{"name": name, "description": description} for name, (description, _) in found.items()]
        )
    table = Table(
        "template", "description", title="chordflow init --template NAME [PATH]", title_justify="left"
    )
    for name, (description, _) in found.items():
        table.add_row(Text(name), Text(description))
    console.print(table)
    return EXIT_OK


@click.command()
@click.option(
    "--template",
    "name",
    required=True,
    type=click.Choice(list(available_templates())),
    help="Which template (see `chordflow templates`).",
)
@click.argument("path", type=click.Path(path_type=Path), default="pipeline.yaml")
@click.option("--force", is_flag=True, help="Overwrite PATH if it exists.")
@command
def init(name: str, path: Path, force: bool) -> int:
    """Write a template pipeline file to PATH (default pipeline.yaml)."""
    target = path / "pipeline.yaml" if path.is_dir() else path
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with target.open("w" if force else "x", encoding="utf-8") as file:  # "x": never overwrite
            file.write(available_templates()[name][1].read_text(encoding="utf-8"))
    except FileExistsError:
        say(f"error: {target} already exists; choose another path or pass --force to overwrite it", err=True)
        return EXIT_FAILED
    say(f"wrote {target} from template '{name}'; next: chordflow validate {target}")
    return EXIT_OK


COMMANDS = (validate, plan, graph_command, schema, templates_command, init)
