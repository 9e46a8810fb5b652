"""Following a run on the terminal: a live table on a TTY, one line per event otherwise.

The live table redraws on a timer (4 times a second: the elapsed time, the ETA and the
running stages' durations tick even when nothing happens; the ETA is `RunEta`'s, from the
pipeline's history, see eta.py) and re-reads the run after events:
an event that comes while the last read is recent marks the table stale, and the next tick
reads it, so the last event is never dropped. It disappears when the run ends (the summary
table is printed once, after it). It reads the run's stream to its real end, across `retry`.

Every name, id, host and error shown comes from a pipeline file or a stage: each goes to the
terminal as a `Text` made terminal-safe (`render.term`), never as rich markup, and no control
character of it reaches the terminal."""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import Any

import redis
from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from orchestration.api import Client
from orchestration.cli import eta
from orchestration.cli._common import console, say
from orchestration.cli.capacity_view import state_label
from orchestration.cli.plan_limits import settings_limits_or_none
from orchestration.cli.runview import run_view
from orchestration.engine.attempts import AttemptHistory
from orchestration.fleet import history as run_history
from orchestration.graph.render import term
from orchestration.states import KEPT_ON_RETRY, RUN_FINAL, State

STATE_STYLE = {
    State.PENDING: "dim",
    State.QUEUED: "cyan",
    State.RUNNING: "bold yellow",
    State.RETRYING: "magenta",
    State.SUCCEEDED: "green",
    State.FALLBACK: "green",
    State.SKIPPED: "dim",
    State.FAILED: "bold red",
    State.UPSTREAM_FAILED: "red",
    State.CANCELLED: "red",
}
BAR_CELLS = 10  # of a stage's progress bar (`ctx.progress`)
READ_ETA_S = 1.0  # a followed run's state is read for its ETA at most this often
MAX_PACE = 3.0  # a run's time left is at most this many times its stages' estimated path


class RunEta:
    """A run's time left: its pipeline's recent durations and its limits, read once; the run's
    state at each call (eta.remaining_s). What recent runs took beyond their stages' estimated
    path (dispatch, commits) scales it: `pace`, at least 1."""

    def __init__(self, client: Client, run_id: str):
        self.graph = client.store.runs.graph(run_id)
        pools, rates = settings_limits_or_none(client.settings)
        self.limits = eta.limits_of(self.graph, pools, rates)
        self.pace = 1.0
        self._read: tuple[float, float | None] | None = None  # (when, seconds left then)
        try:
            self.estimates = run_history.stage_durations(client.store, self.graph.name)
            whole = run_history.run_seconds(client.store, self.graph.name)
        except redis.RedisError:
            self.estimates, whole = {}, None
        planned = eta.finish_s(
            self.graph.nodes,
            {n.id: self.estimates.get(n.id, n.estimate_s) for n in self.graph.nodes},
            {},
            set(),
            self.limits,
        )
        if whole is not None and planned > 0:
            self.pace = min(MAX_PACE, max(1.0, whole / planned))

    def now_left_s(self, client: Client, run_id: str) -> float | None:
        """`left_s` of the run as it is now, read at most every READ_ETA_S: between two reads
        the last one counts down (a stream of events must not read the whole run each time)."""
        now = time.time()
        if self._read is None or now - self._read[0] >= READ_ETA_S:
            self._read = (now, self.left_s(client.status(run_id), now))
        read_at, left = self._read
        return None if left is None else max(0.0, left - (now - read_at))

    def left_s(self, status: dict[str, Any], now: float | None = None) -> float | None:
        """Seconds the run has left, None once it ended (or while it is paused)."""
        if status.get("status") != State.RUNNING:
            return None
        left = eta.remaining_s(self.graph, status, self.estimates, now or time.time(), self.limits)
        return None if left is None else left * self.pace


REFRESH_PER_S = 4
READ_EVERY_S = 0.25  # the run is read again at most this often after events
READ_ANYWAY_S = 2.0  # ... and at least this often (a heartbeat for what no event tells)


def _clock(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def bar(fraction: float) -> str:
    """`███░░░░░░░ 30%`"""
    filled = round(fraction * BAR_CELLS)
    return "█" * filled + "░" * (BAR_CELLS - filled) + f" {int(fraction * 100)}%"


def detail_of(s: dict[str, Any]) -> str:
    """A stage's detail cell: its progress bar, its items, its error while current, a cache hit."""
    parts = []
    own = s.get("progress")
    if own and s.get("state") == State.RUNNING and (fraction := eta.part_done({"progress": own})) is not None:
        parts.append(bar(fraction))
    if "items_total" in s:
        parts.append(f"{s['items_done']}/{s['items_total']} items")
    if s.get("cached"):
        parts.append("cache hit")
    error = s.get("error")
    if error:
        text = f"{error.get('type')}: {error.get('message', '')}"
        if s["state"] == State.RETRYING:
            text = f"will retry after {text}"
        elif s["state"] == State.FALLBACK:
            text = f"fallback after {text}"
        parts.append(text)
    return " · ".join(parts)[:100]


def progress_text(status: dict[str, Any]) -> str:
    """`4/6 stages (66%)`: the stages done (succeeded, skipped or fell back), then those that
    ended otherwise (`· 2 cancelled`): a cancelled run is not 100% done."""
    stages = status["stages"]
    total = max(1, len(stages))
    done = sum(1 for s in stages.values() if s["state"] in KEPT_ON_RETRY)
    text = f"{done}/{total} stages ({100 * done // total}%)"
    for state in (State.FAILED, State.UPSTREAM_FAILED, State.CANCELLED):
        if count := sum(1 for s in stages.values() if s["state"] == state):
            text += f" · {count} {state.value.replace('_', ' ')}"
    return text


def status_table(status: dict[str, Any], now: float | None = None, eta_s: float | None = None) -> Table:
    """The run as a table: each stage's state, attempts (×N), host, queue, time and detail;
    `eta_s`: the time it has left (RunEta), shown while it runs."""
    now = now or time.time()
    stages = status["stages"]
    elapsed = max(0.0, (status.get("finished_at") or now) - (status.get("created_at") or now))
    left = f" · ETA {_clock(eta_s)}" if eta_s is not None and status["status"] not in RUN_FINAL else ""
    table = Table(
        title=term(
            f"{status['pipeline']} · run {status['run_id']} · {status['status']} · "
            f"{progress_text(status)} · {_clock(elapsed)}{left}"
        ),
        title_justify="left",
    )
    for column in ("stage", "state", "attempts", "host", "queue", "time", "detail"):
        table.add_column(column)
    for sid, s in stages.items():
        started, finished = s.get("started_at"), s.get("finished_at")
        took = f"{max(0.0, (finished or now) - started):.2f}s" if started else ""
        tries = s.get("tries", s.get("attempts") or 0)
        attempts = f"×{tries}" if tries > 1 else str(tries or "")
        style = STATE_STYLE.get(s["state"], "")
        table.add_row(
            term(sid),
            term(state_label(s), style=style),  # `waiting (pool llm 4/4)` for a stage waiting for a slot
            attempts,
            term(s.get("host") or ""),
            term(s.get("queue") or ""),
            took,
            term(detail_of(s)),
        )
    return table


def event_line(event: dict[str, str]) -> str:
    """One line of a non-TTY `follow` (raw: print it with `event_text`)."""
    stamp = datetime.fromtimestamp(float(event.get("t", time.time()))).strftime("%H:%M:%S.%f")[:-3]
    if event.get("kind") == "run":
        return f"{stamp}  run {event.get('state')}" + (" (retry)" if event.get("retry") else "")
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


class Screen:
    """What the live table shows: the run as last read, re-read on ticks after events."""

    def __init__(self, client: Client, run_id: str):
        self.client, self.run_id = client, run_id
        self.history = AttemptHistory()
        self.view = run_view(client, run_id, history=self.history)
        self.eta = RunEta(client, run_id)
        self.read_at = time.monotonic()
        self.stale = False

    def on_event(self, _: dict[str, str]) -> None:
        self.stale = True

    def on_tick(self) -> None:
        since = time.monotonic() - self.read_at
        if (self.stale and since >= READ_EVERY_S) or since >= READ_ANYWAY_S:
            self.read()

    def read(self) -> None:
        self.stale = False
        self.read_at = time.monotonic()
        self.view = run_view(self.client, self.run_id, history=self.history)

    def table(self) -> Table:
        now = time.time()
        return status_table(self.view, now, self.eta.left_s(self.view, now))


def follow(
    client: Client, run_id: str, console: Console, timeout_s: float | None = None, items: bool = False
) -> str:
    """Show the run until it ends; returns its final status."""
    if not console.is_terminal:
        run_eta = RunEta(client, run_id)

        def show(event: dict[str, str]) -> None:
            if not items and event.get("kind") == "item":
                return
            line = event_line(event)
            if event.get("kind") == "stage" and (left := run_eta.now_left_s(client, run_id)) is not None:
                line += f" · ETA {_clock(left)}"
            console.print(term(line), highlight=False)

        return client.follow(run_id, timeout_s, on_event=show)
    screen = Screen(client, run_id)
    with Live(
        console=console,
        get_renderable=screen.table,
        refresh_per_second=REFRESH_PER_S,
        transient=True,  # the summary after it prints the final table once
    ):
        return client.follow(
            run_id, timeout_s, on_event=screen.on_event, on_tick=screen.on_tick, tick_s=READ_EVERY_S
        )


def print_summary(status: dict[str, Any], outputs: bool, eta_s: float | None = None) -> None:
    """The table of a run (`eta_s`: its time left while it runs), its outputs (with `outputs`),
    metrics and status."""
    console.print(status_table(status, eta_s=eta_s))
    if outputs:
        for sid, stage in status["stages"].items():
            if stage["output"] is not None:
                say(f"{sid}: {json.dumps(stage['output'])[:300]}")
    if status["metrics"]:
        say("metrics: " + ", ".join(f"{k}={v}" for k, v in status["metrics"].items()))
    say(f"run {status['run_id']} {status['status']}")
