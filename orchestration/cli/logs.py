"""`chordflow logs`: the log lines of a run's attempts, live with `--follow`."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from orchestration.cli import logview
from orchestration.cli._common import (
    EXIT_OK,
    client_from_env,
    command,
    json_option,
    say,
    stopped_following,
)
from orchestration.errors import InvalidInput, StageNotFound
from orchestration.language.ids import check_run_id, check_stage_id

if TYPE_CHECKING:
    from orchestration.api import Client


@click.command()
@click.argument("run_id")
@click.argument("stage_id", required=False)
@click.option("--attempt", type=click.IntRange(1), help="Only this attempt of STAGE (1 is the first).")
@click.option("--item", type=click.IntRange(0), help="Only this fan-out item of STAGE (0 is the first).")
@click.option(
    "--round",
    "round_",
    type=click.IntRange(0),
    help="Only this round of the run: 0 as submitted, N after the Nth `chordflow retry`.",
)
@click.option(
    "--follow", "-f", is_flag=True, help="Print lines as they come, until the attempt/stage/run ends."
)
@json_option
@command
def logs(
    run_id: str,
    stage_id: str | None,
    attempt: int | None,
    item: int | None,
    round_: int | None,
    follow: bool,
    as_json: bool,
) -> int:
    """Log lines of a run's stages, per round, attempt and item: ctx.log lines and shell output,
    each with its time and level; a failed stage without lines shows its error. With --json, one
    JSON object per line."""
    check_run_id(run_id)
    if stage_id is not None:
        check_stage_id(stage_id)
    elif attempt is not None or item is not None:
        raise click.UsageError("--attempt and --item need a STAGE")
    if follow and round_ is not None:
        raise click.UsageError("--round reads a round that is over; --follow follows the current one")
    client = client_from_env()
    graph = client.store.runs.graph(run_id)
    ids = [n.id for n in graph.nodes]
    if stage_id is not None and stage_id not in ids:
        raise StageNotFound(run_id, stage_id, ids)
    if stage_id is not None and item is not None:
        _check_item(client, run_id, stage_id, item, graph.node(stage_id).fans_out)
    wanted = [stage_id] if stage_id else ids
    if follow:
        try:
            logview.follow_logs(client, run_id, wanted, stage_id, item, attempt, as_json)
        except KeyboardInterrupt:
            return stopped_following(run_id)
        return EXIT_OK
    shown = logview.print_logs(client, run_id, wanted, item, attempt, as_json, round_)
    if not shown and not as_json:
        which = " ".join(
            x
            for x in (
                stage_id,
                f"item {item}" if item is not None else "",
                f"attempt {attempt}" if attempt else "",
                f"round {round_}" if round_ is not None else "",
            )
            if x
        )
        say(f"no log lines for {which or 'this run'} (yet)", err=True)
    return EXIT_OK


def _check_item(client: Client, run_id: str, stage_id: str, item: int, fans_out: bool) -> None:
    """InvalidInput (exit 2) for an item a stage does not have: it does not fan out, or its
    fan-out has fewer items (while its items are not known yet, any may come)."""
    if not fans_out:
        raise InvalidInput(
            f"stage '{stage_id}' of run {run_id} does not fan out: --item needs a fan-out stage"
        )
    total = client.store.runs.items_total(run_id, stage_id)
    if total and item >= total:
        raise InvalidInput(
            f"stage '{stage_id}' of run {run_id} has {total} item{'s' if total != 1 else ''} "
            f"(0 to {total - 1}); there is no item {item}"
        )


COMMANDS = (logs,)
