"""Commands on pipelines that depend on pipelines: `pipelines` (list, add, remove, graph), `assets`,
and `chain` (run, resume, status)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.table import Table

from orchestration.api import Client
from orchestration.cli._common import (
    EXIT_FAILED,
    EXIT_OK,
    command,
    console,
    file_argument,
    json_option,
    load_spec,
    print_json,
    redis_settings,
    say,
    set_option,
)
from orchestration.engine.dependencies import registry, span
from orchestration.fleet import chains
from orchestration.fleet.pipelines import AssetRow, PipelineRow, asset_rows, pipeline_rows
from orchestration.fleet.registry import register, unregister
from orchestration.graph import pipeline_map
from orchestration.graph.render import term, term_lines
from orchestration.language.loader import parse_override
from orchestration.states import RunStatus


def _client() -> Client:
    return Client(redis_settings())


def _age(entry: dict[str, Any] | None) -> str:
    return f"{span(entry['age_s'])} ago" if entry else "never"


# -- pipelines ------------------------------------------------------------------------------------


@click.group(invoke_without_command=True)
@json_option
@click.pass_context
def pipelines(ctx: click.Context, as_json: bool) -> None:
    """The registered pipelines: last run, last success, freshness, dependencies, assets."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(pipelines_list, as_json=as_json)


@pipelines.command("list")
@json_option
@command
def pipelines_list(as_json: bool) -> int:
    """Each registered pipeline: last run, last success, freshness (by max_age and depends_on),
    dependencies not met now, and the assets it provides."""
    client = _client()
    rows = pipeline_rows(client.store, client.settings)
    if as_json:
        return print_json([row.as_dict() for row in rows])
    if not rows:
        say("no pipelines registered (add one with `chordflow pipelines add FILE`)")
        return EXIT_OK
    table = Table("pipeline", "schedule", "last run", "last success", "freshness", "dependencies", "provides")
    for row in rows:
        table.add_row(*(term_lines(cell) for cell in _cells(row)))  # `dependencies`: one a line
    console.print(table)
    return EXIT_OK


def _cells(row: PipelineRow) -> list[str]:
    last = row.last_run
    run = f"{last['status']} {_age(last)}" if last else "never"
    if last and last.get("reason"):
        run += f": {last['reason']}"
    limit = f" (max {span(row.max_age_s)})" if row.max_age_s else ""
    needs = "\n".join(row.unmet) if row.unmet else ("met" if row.depends_on or row.requires else "-")
    return [
        row.pipeline,
        row.schedule or "-",
        run,
        _age(row.last_success),
        row.freshness + limit,
        needs,
        ", ".join(row.provides) or "-",
    ]


@pipelines.command("add")
@file_argument
@set_option
@json_option
@command
def pipelines_add(file: Path, sets: tuple[str, ...], as_json: bool) -> int:
    """Register FILE (validated now, `--set` values applied), replacing a pipeline of the same name:
    its depends_on, requires, provides and triggers join the graph of pipelines."""
    client = _client()
    spec = load_spec(file, sets, client.settings)
    overrides = dict(parse_override(item) for item in sets)
    created, notes = register(client.store, spec, str(file), overrides)
    if as_json:
        return print_json({"pipeline": spec.name, "created": created, "notes": notes})
    links = [f"depends on {', '.join(d.pipeline for d in spec.depends_on)}"] if spec.depends_on else []
    if spec.triggers:
        links.append(f"triggered by {', '.join(t.on_success_of for t in spec.triggers)}")
    say(
        f"pipeline '{spec.name}' {'added' if created else 'updated'}"
        + (": " + "; ".join(links) if links else "")
    )
    for note in notes:
        say(f"note: {note}", err=True)
    return EXIT_OK


@pipelines.command("remove")
@click.argument("name")
@command
def pipelines_remove(name: str) -> int:
    """Forget a registered pipeline (its runs stay; nothing it triggered is stopped)."""
    if not unregister(_client().store, name):
        say(f"error: no registered pipeline '{name}' (see `chordflow pipelines`)", err=True)
        return EXIT_FAILED
    say(f"pipeline '{name}' removed")
    return EXIT_OK


@pipelines.command("graph")
@click.option("--format", "fmt", type=click.Choice(["mermaid", "dot"]), default="mermaid", show_default=True)
@command
def pipelines_graph(fmt: str) -> int:
    """Print the graph of the registered pipelines and their assets, as Mermaid or Graphviz DOT,
    each pipeline coloured by its freshness."""
    client = _client()
    specs = {name: r.spec for name, r in registry(client.store).items()}
    states = {row.pipeline: row.freshness for row in pipeline_rows(client.store, client.settings, False)}
    draw = pipeline_map.to_mermaid if fmt == "mermaid" else pipeline_map.to_dot
    click.echo(draw(specs, {k: v for k, v in states.items() if v != "-"}), nl=False)
    return EXIT_OK


# -- assets -------------------------------------------------------------------------------------------


@click.command()
@json_option
@command
def assets(as_json: bool) -> int:
    """Each asset: the run that last provided it and when, its freshness, who provides and requires it."""
    rows = asset_rows(_client().store)
    if as_json:
        return print_json([row.as_dict() for row in rows])
    if not rows:
        say("no assets (a pipeline names them with `provides:` and `requires:`)")
        return EXIT_OK
    table = Table("asset", "last provided", "by run", "freshness", "provided by", "required by")
    for row in rows:
        table.add_row(*(term(cell) for cell in _asset_cells(row)))
    console.print(table)
    return EXIT_OK


def _asset_cells(row: AssetRow) -> list[str]:
    last = row.last
    by = f"{last['run_id']} ({last['pipeline']})" if last else "-"
    limit = f" (max {span(row.max_age_s)})" if row.max_age_s else ""
    return [
        row.asset,
        _age(last),
        by,
        row.freshness + limit,
        ", ".join(row.provided_by) or "-",
        ", ".join(row.required_by) or "-",
    ]


# -- chains -------------------------------------------------------------------------------------------


@click.group()
def chain() -> None:
    """Run registered pipelines one after another in dependency order, each as its own run."""


def _drive(client: Client, found: chains.Chain, timeout: float | None, as_json: bool) -> int:
    def step(pipeline: str, run_id: str, what: str) -> None:
        if not as_json:
            say(f"{pipeline}: run {run_id} {what}")

    done = chains.drive(client, found, timeout, step)
    if as_json:
        print_json(done.as_dict())
    else:
        say(chains.describe(done))
        if done.status == RunStatus.FAILED:
            say(f"fix it, then `chordflow chain resume {done.chain_id}` goes on from {done.failed}")
    return EXIT_OK if done.status == RunStatus.SUCCEEDED else EXIT_FAILED


@chain.command("run")
@click.argument("names", nargs=-1)
@click.option("--from", "from_pipeline", metavar="PIPELINE", help="PIPELINE and what its successes trigger.")
@click.option("--force", is_flag=True, help="Start each pipeline even if its dependencies are not met.")
@click.option("--timeout", type=float, help="Give up waiting for one run after this many seconds.")
@json_option
@command
def chain_run(
    names: tuple[str, ...], from_pipeline: str | None, force: bool, timeout: float | None, as_json: bool
) -> int:
    """Run the registered pipelines NAMES (or --from one, following the triggers) in dependency
    order, each as its own run, stopping at the first that fails. Exit 0 when all succeeded, 1 when
    one failed, 4 when one's dependencies are not met."""
    if bool(names) == bool(from_pipeline):
        raise click.UsageError("name the pipelines, or give --from PIPELINE (not both)")
    client = _client()
    found = chains.start(client, list(names), force, from_pipeline)
    if not as_json:
        say(f"chain {found.chain_id}: {' → '.join(found.pipelines)}")
    return _drive(client, found, timeout, as_json)


@chain.command("resume")
@click.argument("chain_id", required=False)
@click.option("--timeout", type=float, help="Give up waiting for one run after this many seconds.")
@json_option
@command
def chain_resume(chain_id: str | None, timeout: float | None, as_json: bool) -> int:
    """Go on with a chain (the newest, or CHAIN_ID) from the pipeline that did not succeed, reusing
    the runs that did; that pipeline runs again from its registered file."""
    client = _client()
    found = chains.load(client, chain_id)
    if found.status == RunStatus.SUCCEEDED:
        print_json(found.as_dict()) if as_json else say(f"{chains.describe(found)}: nothing to resume")
        return EXIT_OK
    return _drive(client, found, timeout, as_json)


@chain.command("status")
@click.argument("chain_id", required=False)
@json_option
@command
def chain_status(chain_id: str | None, as_json: bool) -> int:
    """A chain (the newest, or CHAIN_ID): its pipelines in order and the status of each one's run."""
    client = _client()
    found = chains.load(client, chain_id)
    steps = chains.chain_runs(client, found.chain_id)
    if as_json:
        return print_json({**found.as_dict(), "steps": steps})
    say(chains.describe(found))
    for s in steps:
        say(f"  {s['pipeline']}: {s['run_id'] or '-'} {s['status'] or 'not run'}")
    return EXIT_OK


COMMANDS = (pipelines, assets, chain)
