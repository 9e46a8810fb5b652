"""Following a run on the terminal: a live table on a TTY, one line per event otherwise.

Every name, id, host and error shown comes from a pipeline file or a stage: each goes to the
terminal as a `Text` made terminal-safe (`render.term`), never as rich markup, and no control
character of it reaches the terminal."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from orchestration.api import Client
from orchestration.engine.store import RUN_FINAL, TERMINAL
from orchestration.graph.render import term

STATE_STYLE = {
    "pending": "dim",
    "queued": "cyan",
    "running": "bold yellow",
    "retrying": "magenta",
    "succeeded": "green",
    "fallback": "green",
    "skipped": "dim",
    "failed": "bold red",
    "upstream_failed": "red",
    "cancelled": "red",
}


def status_table(status: dict[str, Any], now: float | None = None) -> Table:
    now = now or time.time()
    stages = status["stages"]
    done = sum(1 for s in stages.values() if s["state"] in TERMINAL)
    total = max(1, len(stages))
    elapsed = (status.get("finished_at") or now) - (status.get("created_at") or now)
    eta = ""
    if 0 < done < total and status["status"] not in RUN_FINAL:
        eta = f" · ETA {elapsed / done * (total - done):.0f}s"
    table = Table(
        title=term(
            f"{status['pipeline']} · run {status['run_id']} · {status['status']} · "
            f"{done}/{total} stages ({100 * done // total}%) · {elapsed:.1f}s{eta}"
        ),
        title_justify="left",
    )
    for column in ("stage", "state", "attempts", "host", "queue", "time", "detail"):
        table.add_column(column)
    for sid, s in stages.items():
        started, finished = s.get("started_at"), s.get("finished_at")
        took = f"{(finished or now) - started:.2f}s" if started else ""
        detail = ""
        if "items_total" in s:
            detail = f"{s['items_done']}/{s['items_total']} items"
        if s.get("error"):
            detail = f"{s['error'].get('type')}: {s['error'].get('message', '')}"[:80]
        style = STATE_STYLE.get(s["state"], "")
        table.add_row(
            term(sid),
            term(s["state"], style=style),
            str(s["attempts"] or ""),
            term(s.get("host") or ""),
            term(s.get("queue") or ""),
            took,
            term(detail),
        )
    return table


def event_line(event: dict[str, str]) -> str:
    """One line of a non-TTY `follow` (raw: print it with `event_text`)."""
    stamp = datetime.fromtimestamp(float(event.get("t", time.time()))).strftime("%H:%M:%S.%f")[:-3]
    if event.get("kind") == "run":
        return f"{stamp}  run {event.get('state')}"
    where = event.get("stage", "")
    if event.get("item"):
        where += f"[{event['item']}]"
    extra = f" on {event['host']}" if event.get("host") else ""
    if event.get("attempt") and event.get("attempt") != "1":
        extra += f" (attempt {event['attempt']})"
    if event.get("items"):
        extra += f" ({event['items']} items)"
    return f"{stamp}  {where} {event.get('state')}{extra}"


def event_text(event: dict[str, str]) -> Text:
    """`event_line` as terminal-safe Text: no markup read, no control character printed."""
    return term(event_line(event))


def follow(
    client: Client, run_id: str, console: Console, timeout_s: float | None = None, items: bool = False
) -> str:
    """Show the run until it ends; returns its final status."""
    if not console.is_terminal:

        def show(event: dict[str, str]) -> None:
            if items or event.get("kind") != "item":
                console.print(event_text(event), highlight=False)

        return client.follow(run_id, timeout_s, on_event=show)
    last = 0.0
    with Live(status_table(client.status(run_id)), console=console, refresh_per_second=4) as live:

        def refresh(_: dict[str, str]) -> None:
            nonlocal last
            if time.monotonic() - last > 0.25:
                last = time.monotonic()
                live.update(status_table(client.status(run_id)))

        final = client.follow(run_id, timeout_s, on_event=refresh)
        live.update(status_table(client.status(run_id)))
    return final
