"""Seeing a run, without Redis: an attempt's live log, the attempts read from events, typed JSON,
the strict config file, the SVG graph, the status table and the commands' options."""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from orchestration.cli.main import cli, main
from orchestration.cli.progress import status_table
from orchestration.cli.runview import iso, to_json
from orchestration.engine.attempts import LOST, RETRIED, AttemptHistory
from orchestration.graph import render
from orchestration.graph.resolve import resolve
from orchestration.language.validation import validate_data
from orchestration.settings import Settings
from workers.context import StageLog, stage_logger
from workers.livelog import AttemptLog

# -- an attempt's live log (workers/livelog.py) ----------------------------------------------------


class Writes:
    """Records what an AttemptLog sends, batch by batch."""

    def __init__(self) -> None:
        self.batches: list[tuple[list[tuple[float, str, str]], dict[str, Any]]] = []
        self.lock = threading.Lock()

    def __call__(self, entries: list[tuple[float, str, str]], meta: Any) -> None:
        with self.lock:
            self.batches.append((list(entries), dict(meta)))

    def levels(self) -> list[str]:
        return [level for entries, _ in self.batches for _, level, _ in entries]

    def texts(self) -> list[str]:
        return [
            text for entries, _ in self.batches for _, level, text in entries if level not in ("BEGIN", "END")
        ]


def test_a_quiet_attempt_sends_nothing_and_starts_no_thread():
    writes = Writes()
    log = AttemptLog(writes, flush_s=0.05)
    log.close({"outcome": "succeeded"})
    assert writes.batches == [] and not log.started


def test_lines_are_sent_in_batches_while_the_stage_runs_then_the_end_with_the_outcome():
    writes = Writes()
    log = AttemptLog(writes, flush_s=0.1, begin="attempt 1")
    for i in range(5):
        log.add(f"line {i}")
    deadline = time.monotonic() + 5
    while not writes.batches and time.monotonic() < deadline:
        time.sleep(0.01)
    # the lines went out together, before the attempt ended, in one batch (one round trip)
    assert len(writes.batches) == 1 and writes.texts() == [f"line {i}" for i in range(5)]
    assert writes.levels()[0] == "BEGIN"
    log.add("last", "ERROR")
    log.close({"outcome": "failed", "host": "w9"})
    entries, meta = writes.batches[-1]
    assert [(lv, text) for _, lv, text in entries] == [("ERROR", "last"), ("END", "failed")]
    assert meta["ended"] is True and meta["host"] == "w9" and meta["lines"] == 6
    log.close({"outcome": "again"})  # once
    assert len(writes.batches) == 2


def test_a_flood_between_two_sends_keeps_the_last_cap_lines_and_says_how_many_were_dropped():
    writes = Writes()
    log = AttemptLog(writes, cap=10, flush_s=60)  # no tick in this test: only close sends
    log.add_many([f"l{i}" for i in range(25)], "STDOUT")
    log.close({"outcome": "succeeded"})
    texts = writes.texts()
    assert texts[0].startswith("… 15 log lines dropped") and "log_lines_cap" in texts[0]
    assert texts[1:] == [f"l{i}" for i in range(15, 25)]
    assert log.total == 25 and log.dropped == 15


def test_a_long_line_keeps_its_end():
    log = AttemptLog(None, line_chars=10)
    log.add("x" * 100 + "END")
    assert log.lines() == ["…xxxxxxEND"]


def test_a_writer_that_fails_never_fails_the_stage(caplog):
    def broken(entries: Any, meta: Any) -> None:
        raise ConnectionError("redis is gone")

    log = AttemptLog(broken, flush_s=0.01)
    log.add("a line")
    with caplog.at_level(logging.WARNING, logger="chordflow.worker"):
        log.close({"outcome": "succeeded"})
    assert log.failed_sends >= 1 and "redis is gone" in caplog.text


def test_ctx_log_formats_its_arguments_and_keeps_the_level():
    sink = AttemptLog(None)
    stage_log = StageLog(logging.getLogger("chordflow.stage.test"), sink, "[r/s]")
    stage_log.info("making %s items", 3)
    stage_log.warning("for %(who)s", {"who": "you"})
    stage_log.debug("kept even below the worker's level")
    stage_log.error("%d%% done", "not a number")  # a wrong format is kept, not raised
    try:
        raise ValueError("bad input")
    except ValueError:
        stage_log.exception("it broke")
    lines = sink.lines()
    assert lines[:3] == ["making 3 items", "for you", "kept even below the worker's level"]
    assert lines[3].startswith("%d%% done") and "not a number" in lines[3]
    assert lines[4].startswith("it broke\nTraceback") and "ValueError: bad input" in lines[4]
    assert [level for _, level, _ in sink._pending] == ["INFO", "WARNING", "DEBUG", "ERROR", "ERROR"]


def test_a_stage_logger_is_named_for_its_stage_and_not_kept_by_the_logging_module(caplog):
    known = set(logging.Logger.manager.loggerDict)
    loggers = [stage_logger(f"train[lr={i}]") for i in range(1000)]
    assert set(logging.Logger.manager.loggerDict) - known <= {"chordflow.stage"}
    with caplog.at_level(logging.INFO, logger="chordflow.stage"):
        StageLog(loggers[7], AttemptLog(None), "[r/train]").info("epoch %d", 3)
    (record,) = [r for r in caplog.records if r.getMessage() == "[r/train] epoch 3"]
    assert record.name == "chordflow.stage.train[lr=7]"  # a handler's filter by stage still works


# -- attempts from the event stream (engine/attempts.py) -----------------------------------------


def _events(*events: dict[str, str]) -> list[tuple[str, dict[str, str]]]:
    return [(f"{i + 1}-0", e) for i, e in enumerate(events)]


def test_attempts_are_read_from_the_events_across_retries_lost_workers_and_a_rerun():
    error = json.dumps({"type": "ConnectionError", "message": "hung up"})
    history = AttemptHistory()
    history.feed(
        _events(
            {
                "kind": "stage",
                "stage": "a",
                "item": "",
                "state": "running",
                "attempt": "1",
                "host": "w1",
                "t": "10",
            },
            {
                "kind": "stage",
                "stage": "a",
                "item": "",
                "state": "retrying",
                "attempt": "2",
                "error": error,
                "t": "11",
            },
            {
                "kind": "stage",
                "stage": "a",
                "item": "",
                "state": "running",
                "attempt": "2",
                "host": "w2",
                "t": "12",
            },
            # w2 died: the reaper sent attempt 2 again
            {
                "kind": "stage",
                "stage": "a",
                "item": "",
                "state": "running",
                "attempt": "2",
                "host": "w1",
                "t": "30",
            },
            {"kind": "stage", "stage": "a", "state": "failed", "t": "31"},
            {"kind": "run", "state": "failed", "t": "31"},
            {"kind": "run", "state": "running", "retry": "1", "t": "40"},
            {
                "kind": "stage",
                "stage": "a",
                "item": "",
                "state": "running",
                "attempt": "1",
                "host": "w3",
                "t": "41",
            },
            {"kind": "stage", "stage": "a", "state": "succeeded", "t": "42.5"},
            {
                "kind": "stage",
                "stage": "f",
                "item": "0",
                "state": "running",
                "attempt": "1",
                "host": "w1",
                "t": "50",
            },
            {"kind": "item", "stage": "f", "item": "0", "state": "succeeded", "t": "51"},
        )
    )
    a = history.of("a")
    assert [(r.attempt, r.round, r.host, r.outcome) for r in a] == [
        (1, 0, "w1", RETRIED),
        (2, 0, "w2", LOST),
        (2, 0, "w1", "failed"),
        (1, 1, "w3", "succeeded"),
    ]
    assert a[0].error == {"type": "ConnectionError", "message": "hung up"} and a[0].finished_at == 11.0
    assert a[3].duration_s == 1.5
    assert [(r.item, r.outcome) for r in history.of("f", 0)] == [(0, "succeeded")]
    assert list(history.items_of("f")) == [0] and history.after == "11-0"


def test_typed_json_has_iso_times_and_errors_as_objects():
    data = {
        "created_at": 0.0,
        "stages": {"a": {"finished_at": 1.5, "error": '{"type": "X"}', "n": 3}},
        "t": None,
    }
    assert to_json(data) == {
        "created_at": "1970-01-01T00:00:00.000Z",
        "stages": {"a": {"finished_at": "1970-01-01T00:00:01.500Z", "error": {"type": "X"}, "n": 3}},
        "t": None,
    }
    assert iso(None) is None


# -- the status table ---------------------------------------------------------------------------------


def _status(**stage: Any) -> dict[str, Any]:
    base = {"state": "running", "attempts": 1, "host": "w1", "queue": "cpu", "started_at": 100.0}
    return {
        "run_id": "r1",
        "pipeline": "p",
        "status": "running",
        "created_at": 90.0,
        "finished_at": None,
        "stages": {"a": {**base, **stage}, "b": {**base, "state": "succeeded", "finished_at": 101.0}},
    }


def _text(table: Any) -> str:
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(table)
    return console.export_text()


def test_the_table_shows_tries_the_current_error_only_and_cache_hits():
    error = {"type": "ConnectionError", "message": "hung up"}
    # running again after a failed attempt: the old error is not shown (run_view cleared it)
    running = _text(status_table(_status(tries=2, error=None), now=110.0))
    assert "×2" in running and "ConnectionError" not in running
    waiting = _text(status_table(_status(state="retrying", tries=1, error=error), now=110.0))
    assert "will retry after ConnectionError: hung up" in waiting
    cached = _text(status_table(_status(state="succeeded", cached=True, finished_at=100.1), now=110.0))
    assert "cache hit" in cached


def test_the_elapsed_time_ticks_with_the_clock_and_the_eta_is_the_one_given():
    # the ETA comes from the plan's estimates (cli/eta.py, tests/unit/test_cli_eta.py), not from
    # extrapolating the stages done so far, which grew while a run went on (issue 21)
    status = _status()
    first, later = _text(status_table(status, now=100.0, eta_s=10.0)), _text(status_table(status, now=112.0))
    assert "· 10.0s · ETA 10.0s" in first and "· 22.0s" in later and "ETA" not in later


# -- the config file, the graph of a run, the commands' options ----------------------------------------


def test_the_config_file_refuses_an_unknown_key_and_names_the_known_ones(tmp_path, monkeypatch, capsys):
    config = tmp_path / "chordflow.yaml"
    config.write_text("redis-url: redis://localhost:6379/0\nlog_lines_cap: 5\n", encoding="utf-8")
    monkeypatch.setenv("CHORDFLOW_CONFIG", str(config))
    with pytest.raises(
        ValueError, match=r"unknown setting 'redis-url' \(did you mean 'redis_url'\?\)"
    ) as caught:
        Settings.load()
    assert "log_lines_cap" in str(caught.value) and "dashboard_token" in str(caught.value)
    assert main(["runs"]) == 2
    assert "redis_url" in capsys.readouterr().err
    config.write_text("redis_url: redis://localhost:6379/0\nlog_lines_cap: 5\n", encoding="utf-8")
    assert Settings.load().log_lines_cap == 5


def test_svg_of_a_graph_colours_states_and_escapes_names():
    graph = resolve(
        validate_data(
            {
                "name": "a<b>&c",
                "stages": [{"id": "x", "uses": "noop"}, {"id": "y", "uses": "noop", "needs": ["x"]}],
            }
        ),
        Settings(),
    )
    picture = render.to_svg(graph, {"x": "succeeded", "y": "failed"})
    assert picture.startswith("<svg") and picture.rstrip().endswith("</svg>")
    assert "<title>a&lt;b&gt;&amp;c 0</title>" in picture and "a<b>" not in picture
    assert re.search(r'data-stage="x" data-state="succeeded"', picture)
    assert render.STATE_COLOURS["failed"] in picture and "(failed)" in picture
    assert picture.count("marker-end=") == 1  # one edge


def test_graph_of_a_file_as_svg_needs_no_redis(tmp_path):
    file = tmp_path / "p.yaml"
    file.write_text("name: p\nstages:\n  - {id: a, uses: noop}\n", encoding="utf-8")
    result = CliRunner().invoke(cli, ["graph", str(file), "--format", "svg"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("<svg") and 'data-stage="a"' in result.output


def test_runs_refuses_a_status_that_is_no_run_status_and_a_since_that_is_no_duration():
    bogus = CliRunner().invoke(
        cli, ["runs", "--status", "bogus"], env={"CHORDFLOW_REDIS_URL": "redis://x:1/0"}
    )
    assert bogus.exit_code == 2 and "'bogus' is not one of" in bogus.output
    since = CliRunner().invoke(cli, ["runs", "--since", "soon"], env={"CHORDFLOW_REDIS_URL": "redis://x:1/0"})
    assert since.exit_code == 2 and "not a duration" in since.output


def test_worker_help_is_shown():
    for flag in ("-h", "--help"):
        result = CliRunner().invoke(cli, ["worker", flag])
        assert result.exit_code == 0, result.output
        assert "--import" in result.output and "current directory" in result.output


def test_read_and_control_commands_take_json():
    for command in ("logs", "cancel", "pause", "resume", "retry", "watch", "status", "runs"):
        result = CliRunner().invoke(cli, [command, "--help"])
        assert result.exit_code == 0 and "--json" in result.output, (command, result.output)


def test_docs_cli_has_every_command_with_an_example_and_every_setting():
    text = (Path(__file__).resolve().parents[2] / "docs" / "cli.md").read_text(encoding="utf-8")
    for name in cli.list_commands(click.Context(cli)):
        section = re.search(rf"^### {name}\n(.*?)(?=^##)", text, re.DOTALL | re.MULTILINE)
        assert section, f"docs/cli.md has no section for `chordflow {name}`"
        assert f"chordflow {name}" in section.group(1) and "```" in section.group(1), name
    for name in Settings.model_fields:
        assert f"| `{name}` | `CHORDFLOW_{name.upper()}` |" in text, f"setting {name} is not in docs/cli.md"


def test_a_task_ends_as_its_attempt_did_for_flower():
    from celery.exceptions import Retry

    from workers.livelog import remember_ending
    from workers.outcome import AttemptFailed, task_outcome

    boom = {"type": "RuntimeError", "message": "boom"}
    remember_ending("failed", boom)
    with pytest.raises(AttemptFailed, match="^RuntimeError: boom$"):
        task_outcome("failed: RuntimeError")
    remember_ending("retrying", {"type": "ConnectionError", "message": "hung up"})
    with pytest.raises(Retry) as retried:
        task_outcome("retrying in 0.20s")
    assert str(retried.value.exc) == "ConnectionError: hung up"
    remember_ending("succeeded", None)
    assert task_outcome("succeeded") == "succeeded"
    assert task_outcome("dup: already succeeded") == "dup: already succeeded"
    remember_ending("failed", boom)  # left by an earlier task of this thread: not this task's error
    with pytest.raises(AttemptFailed, match="^refused: unknown run or stage$"):
        task_outcome("refused: unknown run or stage")
