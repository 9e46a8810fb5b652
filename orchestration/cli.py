"""The `chordflow` command line (DESIGN §5): parse, call one function, print, return an exit code.

Exit codes: 0 ok, 2 invalid input (a pipeline problem, a bad option, a malformed run id,
stage id or idempotency key: `ids.py`), 1 anything else (a run failed, Redis refused, an
unexpected error). An `InvalidPipeline` prints every problem, one per line as
`file:line: stage 'x': message`; no error prints a traceback unless CHORDFLOW_DEBUG=1.

More commands live in their own modules (`cli_run.py`), register on `cli` with the
helpers here (`command`, `pipeline_options`, `load_spec`, `settings_from_env`, `say`,
`print_json`), and are imported at the end of this module.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import click
import redis
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table
from rich.text import Text

from . import history, redis_url, render
from .durations import format_duration
from .errors import ChordflowError
from .fleetview import FleetView, fleet_view
from .loader import parse_override
from .registry import BUILTIN_TYPES, ENTRY_POINT_GROUP
from .resolve import Node, RunGraph, resolve
from .retries import resolve_policy
from .settings import Settings
from .spec import Backoff, PipelineSpec, RetryPolicy
from .validation import load_pipeline

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2

console = Console(soft_wrap=True)
errors = Console(stderr=True, soft_wrap=True)


# -- shared helpers -------------------------------------------------------------------------


def say(text: str, err: bool = False) -> None:
    """Print plain text: no rich markup (names, problems and ids may hold `[...]`) and no control
    character but newline and tab (a name or a log line may hold an escape sequence: it is
    printed as the visible text `\\x1b[2J`)."""
    (errors if err else console).print(render.terminal_safe(text), markup=False, highlight=False,
                                       emoji=False)


_C1 = {code: f"\\u{code:04x}" for code in range(0x7F, 0xA0)}


def print_json(data: Any) -> int:
    """Print `data` as JSON on stdout; return EXIT_OK, so a command may `return print_json(...)`.
    (JSON escapes C0 controls itself; DEL and C1 controls are escaped here too.)"""
    click.echo(json.dumps(data, indent=2, ensure_ascii=False).translate(_C1))
    return EXIT_OK


def report_error(exc: ChordflowError, as_json: bool = False) -> int:
    """Print `exc` for a person (stderr) or a program (`--json`, stdout); return its exit code."""
    problems = getattr(exc, "problems", None)
    if as_json:
        listed = [{"message": p.message, "stage_id": p.stage_id, "line": p.line, "source": p.source}
                  for p in problems or []]
        print_json({"ok": False, "error": type(exc).__name__, "message": str(exc), "problems": listed})
    elif problems:
        count = len(problems)
        say(f"error: {count} problem{'s' if count != 1 else ''} found:", err=True)
        for problem in problems:
            say(str(problem), err=True)
    else:
        say(f"error: {exc}", err=True)
    return exc.exit_code


# what a Redis that does not answer, or something else than a Redis at its address, raises
UNREACHABLE = (redis.ConnectionError, redis.TimeoutError, redis.exceptions.InvalidResponse)


def unreachable(exc: BaseException, urls: Sequence[str] = ()) -> redis_url.RedisUnreachable:
    """`cannot reach Redis at redis://host:port/db (reason)` for a connection error, naming the
    Redis the command connected to (else the configured one), its password masked."""
    url = urls[0] if urls else os.environ.get("CHORDFLOW_REDIS_URL")
    reason = str(exc).strip().rstrip(".") or type(exc).__name__
    if isinstance(exc, redis.AuthenticationError):
        reason = f"it refused the credentials: {reason}"
    return redis_url.RedisUnreachable(url, reason)


def command(fn: Callable[..., int | None]) -> Callable[..., None]:
    """Turn a command's return value and ChordflowErrors into its exit code (under click's
    standalone mode too, so CliRunner tests see the same codes as the console script).

    The command runs in `redis_url.fail_fast()`: its Redis clients give up after
    `redis_timeout_s`, and a Redis it cannot reach is `error: cannot reach Redis at ...`, exit 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        as_json = bool(kwargs.get("as_json"))
        with redis_url.fail_fast() as mode:
            try:
                code = fn(*args, **kwargs)
            except ChordflowError as exc:
                code = report_error(exc, as_json=as_json)
            except UNREACHABLE as exc:
                code = report_error(unreachable(exc, mode.urls), as_json=as_json)
        if code:
            raise click.exceptions.Exit(code)

    return wrapper


def redis_settings() -> Settings:
    """The settings of a command that needs a Redis: CHORDFLOW_REDIS_URL set (else a usage error)
    and well-formed (else InvalidRedisUrl, exit 2)."""
    settings = settings_from_env()
    if not settings.redis_url:
        raise click.UsageError("set CHORDFLOW_REDIS_URL to the Redis your runs live in")
    redis_url.check(settings.redis_url)
    return settings


def settings_from_env() -> Settings:
    """The one Settings object of this invocation (CHORDFLOW_* and CHORDFLOW_CONFIG)."""
    try:
        return Settings.load()
    except (ValidationError, ValueError, OSError) as exc:
        say(f"error: invalid configuration (CHORDFLOW_* or CHORDFLOW_CONFIG): {exc}", err=True)
        raise click.exceptions.Exit(EXIT_INVALID) from None


def load_spec(file: Path, sets: Sequence[str], settings: Settings) -> PipelineSpec:
    """Read and validate `file` with `--set NAME=VALUE` overrides; raises InvalidPipeline."""
    overrides = dict(parse_override(item) for item in sets)
    return load_pipeline(file, overrides, settings=settings)


def load_graph(file: Path, sets: Sequence[str], select: str | None, only: bool,
               settings: Settings | None = None) -> RunGraph:
    settings = settings or settings_from_env()
    return resolve(load_spec(file, sets, settings), settings, select, only)


file_argument = click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
set_option = click.option("--set", "sets", multiple=True, metavar="NAME=VALUE",
                          help="Set a variable (repeatable); the value is read as YAML: 30, true, text.")
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for programs.")
select_option = click.option("--select", metavar="EXPR", help="Part of the pipeline: ids, globs, tag:NAME, 10-30, !id.")
only_option = click.option("--only", is_flag=True, help="Only the selected stages, not the upstream ones they need.")


def pipeline_options(fn: Callable) -> Callable:
    """FILE, --set, --select and --only."""
    for option in (only_option, select_option, set_option, file_argument):
        fn = option(fn)
    return fn


def _version() -> str:
    try:
        return metadata.version("chordflow")
    except metadata.PackageNotFoundError:
        return "unknown"


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(_version(), prog_name="chordflow")
def cli() -> None:
    """Chordflow: pipelines of stages on a fleet of Celery workers, state in Redis."""


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


@cli.command()
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
        return print_json({"ok": True, "pipeline": spec.name, "version": spec.version, "stages": enabled,
                           "disabled": disabled, "unverified_types": unverified})
    say(f"ok: {enabled} stages" + (f" ({disabled} disabled)" if disabled else "") + f" in {spec.name} {spec.version}")
    if unverified:
        say(f"unverified stage types (not built in, no '{ENTRY_POINT_GROUP}' entry point installed here; "
            "submit checks them against the live workers):")
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


def plan_data(graph: RunGraph, fleet: FleetView | None = None) -> dict[str, Any]:
    """The `plan --json` document."""
    stages = []
    for position, node in enumerate(graph.nodes, start=1):
        policy = fleet.policy(node) if fleet else resolve_policy(node.retry_policy)
        stages.append({
            "cache": fleet.cache(node) if fleet else ("configured" if node.cache else None),
            "position": position, "id": node.id, "type": node.type, "needs": list(node.needs),
            "queue": node.queue, "level": node.level, "on_critical_path": node.on_critical_path,
            "matrix_instances": len(node.matrix) if node.matrix is not None else None,
            "for_each": node.for_each, "max_concurrency": node.max_concurrency,
            "estimate_s": node.estimate_s, "timeout_s": node.timeout_s, "critical": node.critical,
            "retry": policy.model_dump(mode="json"), "retry_summary": describe_retry(policy),
        })
    return {"pipeline": graph.name, "version": graph.version, "stages": stages,
            "critical_path": list(graph.critical_path), "makespan_s": graph.makespan_s}


def plan_table(graph: RunGraph, fleet: FleetView | None = None) -> Table:
    # Text cells: rich would read `[...]` in a type or name as markup
    table = Table(title=Text(f"{graph.name} {graph.version}: {len(graph.nodes)} stages"), title_justify="left")
    headings = ["#", "stage", "type", "needs", "queue", "retry", "timeout", "fan-out", "level", "critical path"]
    show_cache = any(node.cache for node in graph.nodes)
    if show_cache:
        headings.append("cache")
    for heading in headings:
        table.add_column(heading, justify="right" if heading in ("#", "level") else "left", overflow="fold")

    def needs(node: Node) -> str:
        shown = ", ".join(node.needs[:3])
        return shown + (f" +{len(node.needs) - 3}" if len(node.needs) > 3 else "")

    for position, node in enumerate(graph.nodes, start=1):
        cells = (
            str(position), node.id, node.type, needs(node), node.queue,
            describe_retry(fleet.policy(node) if fleet else resolve_policy(node.retry_policy)),
            format_duration(node.timeout_s) if node.timeout_s is not None else "-",
            render.fan_out_label(node) or "", str(node.level), "●" if node.on_critical_path else "",
        ) + (((fleet.cache(node) if fleet else "on" if node.cache else "") or "",) if show_cache else ())
        table.add_row(*map(Text, cells), style="bold" if node.on_critical_path else None)
    return table


@cli.command()
@pipeline_options
@json_option
@command
def plan(file: Path, sets: tuple[str, ...], select: str | None, only: bool, as_json: bool) -> int:
    """Show what a run would do: order, levels, queues, retries, critical path (a dry run).

    With a Redis URL configured, estimates come from the stage durations of recent runs."""
    settings = settings_from_env()
    spec = load_spec(file, sets, settings)
    graph = resolve(spec, settings, select, only, estimates=history.estimates(settings, spec.name))
    fleet = fleet_view(settings, graph)
    if as_json:
        return print_json(plan_data(graph, fleet))
    console.print(plan_table(graph, fleet))
    say(f"estimated makespan: {format_duration(graph.makespan_s)} "
        f"(critical path: {_path_text(graph.critical_path)})")
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


@cli.command("graph")
@pipeline_options
@click.option("--format", "fmt", type=click.Choice(["mermaid", "dot"]), default="mermaid", show_default=True)
@command
def graph_command(file: Path, sets: tuple[str, ...], select: str | None, only: bool, fmt: str) -> int:
    """Print the pipeline's graph as Mermaid or Graphviz DOT."""
    graph = load_graph(file, sets, select, only)
    click.echo(render.to_mermaid(graph) if fmt == "mermaid" else render.to_dot(graph), nl=False)
    return EXIT_OK


@cli.command()
@command
def schema() -> int:
    """Print the JSON Schema of the pipeline file."""
    return print_json(PipelineSpec.model_json_schema())


@cli.command("templates")
@json_option
@command
def templates_command(as_json: bool) -> int:
    """List the templates `init` can write."""
    found = available_templates()
    if as_json:
        return print_json([{"name": name, "description": description} for name, (description, _) in found.items()])
    table = Table("template", "description", title="chordflow init --template NAME [PATH]", title_justify="left")
    for name, (description, _) in found.items():
        table.add_row(Text(name), Text(description))
    console.print(table)
    return EXIT_OK


@cli.command()
@click.option("--template", "name", required=True, type=click.Choice(list(available_templates())),
              help="Which template (see `chordflow templates`).")
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


# -- entry point --------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """The console script: run the command, return its exit code (0 ok, 1 failed, 2 invalid input)."""
    try:
        result = cli.main(args=list(argv) if argv is not None else None, prog_name="chordflow",
                          standalone_mode=False)
    except click.ClickException as exc:  # usage errors (exit 2) and the like
        exc.show()
        return exc.exit_code
    except click.Abort:
        say("aborted", err=True)
        return 130
    except BrokenPipeError:  # `chordflow plan x | head`: stop quietly (Python docs' recipe)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    except ChordflowError as exc:  # raised outside a command body (e.g. while parsing options)
        return report_error(exc)
    except UNREACHABLE as exc:  # a command without `command`
        return report_error(unreachable(exc))
    except Exception as exc:
        if os.environ.get("CHORDFLOW_DEBUG"):
            raise
        say(f"error: unexpected {type(exc).__name__}: {redis_url.mask(str(exc))} "
            "(set CHORDFLOW_DEBUG=1 for the traceback)", err=True)
        return EXIT_FAILED
    return result if isinstance(result, int) else EXIT_OK


from . import (
    cli_fleet,  # noqa: F401  (flower, beat, schedule, health)
    cli_run,  # noqa: F401  (submit, status, watch, runs, logs, control, stages, worker)
)
from .dashboard import dashboard_command


def _dashboard_checks_redis(serve: Callable[..., None]) -> Callable[..., None]:
    """`dashboard` answers for its Redis before it serves: a malformed URL exits 2 and a Redis it
    cannot reach exits 1 within `redis_timeout_s`, as every other command does."""

    @functools.wraps(serve)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        from .store import connect  # here: the store is not needed by commands without Redis

        settings = settings_from_env()
        if settings.redis_url:
            try:
                with redis_url.fail_fast():
                    connect(settings).ping()
            except ChordflowError as exc:
                raise click.exceptions.Exit(report_error(exc)) from None
            except UNREACHABLE as exc:
                raise click.exceptions.Exit(report_error(unreachable(exc, [settings.redis_url]))) from None
        serve(*args, **kwargs)

    return wrapper


dashboard_command.callback = _dashboard_checks_redis(dashboard_command.callback)  # type: ignore[arg-type]
cli.add_command(dashboard_command)

if __name__ == "__main__":
    sys.exit(main())
