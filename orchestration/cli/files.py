"""Commands on a pipeline file that need no Redis: validate, graph, schema, templates, init (`plan`:
plan.py). `graph RUN` draws a run instead, from the configured Redis."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.table import Table
from rich.text import Text

from orchestration.cli._common import (
    EXIT_INVALID,
    EXIT_OK,
    console,
    file_argument,
    json_option,
    load_graph,
    load_spec,
    offline_command,
    only_option,
    print_json,
    redis_settings,
    say,
    select_option,
    set_option,
    settings_from_env,
)
from orchestration.engine.registry import BUILTIN_TYPES, ENTRY_POINT_GROUP
from orchestration.graph import render
from orchestration.language.durations import format_duration
from orchestration.language.ids import check_run_id
from orchestration.language.options import Backoff, RetryPolicy
from orchestration.language.spec import PipelineSpec

if TYPE_CHECKING:  # `graph RUN` reads a run's graph from Redis; the rest never imports the resolver
    from orchestration.graph.resolve import RunGraph

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
@offline_command
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


# -- how plan words a retry policy ----------------------------------------------------------------


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
    """A run's graph and its stages' states, from the configured Redis (failing fast)."""
    from orchestration.engine import redis_url
    from orchestration.engine.store import RunStore, connect

    check_run_id(run_id)
    settings = redis_settings()
    with redis_url.fail_fast():
        store = RunStore(connect(settings), settings)
        return store.runs.graph(run_id), store.runs.states(run_id)


@click.command("graph")
@click.argument("source", metavar="FILE|RUN")
@set_option
@select_option
@only_option
@click.option(
    "--format", "fmt", type=click.Choice(["mermaid", "dot", "svg"]), default="mermaid", show_default=True
)
@offline_command
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
@offline_command
def schema() -> int:
    """Print the JSON Schema of the pipeline file."""
    return print_json(PipelineSpec.model_json_schema())


@click.command("templates")
@json_option
@offline_command
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
@offline_command
def init(name: str, path: Path, force: bool) -> int:
    """Write a template pipeline file to PATH (default pipeline.yaml)."""
    target = path / "pipeline.yaml" if path.is_dir() else path
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with target.open("w" if force else "x", encoding="utf-8") as file:  # "x": never overwrite
            file.write(available_templates()[name][1].read_text(encoding="utf-8"))
    except FileExistsError:
        say(f"error: {target} already exists; choose another path or pass --force to overwrite it", err=True)
        return EXIT_INVALID  # invalid input: nothing was written
    say(f"wrote {target} from template '{name}'; next: chordflow validate {target}")
    return EXIT_OK


COMMANDS = (validate, graph_command, schema, templates_command, init)
