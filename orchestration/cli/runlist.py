"""`chordflow runs`: recent runs, newest first, filtered by pipeline, status and age."""

from __future__ import annotations

import time

import click
from rich.table import Table

from orchestration.cli._common import EXIT_OK, client_from_env, command, console, json_option, print_json
from orchestration.cli.runview import run_record, to_json
from orchestration.graph.render import term
from orchestration.language.durations import parse_duration
from orchestration.states import RunStatus


def _since(_: click.Context, __: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command()
@click.option("--pipeline", help="Only runs of this pipeline.")
@click.option(
    "--status", "state", type=click.Choice([s.value for s in RunStatus]), help="Only runs in this state."
)
@click.option(
    "--since",
    callback=_since,
    metavar="DURATION",
    help="Only runs submitted in the last DURATION (90, 30m, 1h, 2d).",
)
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 10_000))
@json_option
@command
def runs(pipeline: str | None, state: str | None, since: float | None, limit: int, as_json: bool) -> int:
    """Recent runs, newest first."""
    records = []
    horizon = time.time() - since if since is not None else 0
    for record in client_from_env().runs(limit if not (state or since) else limit * 10, pipeline):
        typed = run_record(record)
        if (state and typed["status"] != state) or (typed["created_at"] or 0) < horizon:
            continue
        records.append(typed)
        if len(records) >= limit:
            break
    if as_json:
        print_json(to_json(records))
        return EXIT_OK
    table = Table("run", "pipeline", "status", "submitted", "took")
    for r in records:
        took = f"{r['duration_s']:.1f}s" if r.get("duration_s") is not None else ""
        table.add_row(
            term(r["run_id"]),
            term(r.get("pipeline") or ""),
            term(r.get("status") or ""),
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["created_at"] or 0)),
            took,
        )
    console.print(table)
    return EXIT_OK


COMMANDS = (runs,)
