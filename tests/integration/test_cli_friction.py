"""Documented commands behave as documented (issue 21): what a user meets in a day's work with the
command line, against a real Redis and real worker processes."""

from __future__ import annotations

import json

import pytest
import yaml
from click.testing import CliRunner

from orchestration.cli.main import cli
from orchestration.language.validation import validate_data

from .conftest import pipeline, wait_until


def chordflow(url: str, *args: str):
    """`chordflow ARGS` in this process (click's runner), on the Redis at `url`."""
    return CliRunner().invoke(cli, list(args), env={"CHORDFLOW_REDIS_URL": url, "COLUMNS": "200"})


@pytest.fixture(scope="module")
def fleet(bare_cluster):
    """One worker, serving only the cpu queue."""
    bare_cluster.start_worker(queues=("cpu",), concurrency=2)
    return bare_cluster


def write(tmp_path, data: dict, name: str = "p.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return str(path)


def test_a_queue_no_live_worker_serves_is_a_warning_and_the_run_waits(fleet, tmp_path):
    file = write(tmp_path, pipeline("gpu-later", {"id": "train", "uses": "noop", "queue": "gpu"}))
    done = chordflow(fleet.server.url, "submit", file)
    assert done.exit_code == 0, done.output
    assert "warning: no live worker serves queue 'gpu': train" in done.stderr
    run_id = done.stdout.strip()
    assert fleet.client.status(run_id)["stages"]["train"]["state"] == "queued"
    assert chordflow(fleet.server.url, "cancel", run_id).exit_code == 0


def test_a_type_no_worker_serves_on_a_served_queue_is_still_refused(fleet, tmp_path):
    file = write(tmp_path, pipeline("typo", {"id": "x", "uses": "nosuch.type"}))
    done = chordflow(fleet.server.url, "submit", file)
    assert done.exit_code == 2
    assert "no live worker serves on queue 'cpu'" in done.stderr


def test_a_reused_idempotency_key_with_other_values_or_pipeline_is_exit_2(fleet, tmp_path):
    file = write(tmp_path, pipeline("keyed", {"id": "a", "uses": "noop"}, variables={"day": "mon"}))
    other = write(tmp_path, pipeline("other", {"id": "a", "uses": "noop"}), "other.yaml")
    url = fleet.server.url
    first = chordflow(url, "submit", file, "--idempotency-key", "k-1", "--set", "day=mon")
    assert first.exit_code == 0, first.output
    again = chordflow(url, "submit", file, "--idempotency-key", "k-1", "--set", "day=mon")
    assert (again.exit_code, again.stdout) == (0, first.stdout)  # the same submission: the same run
    runs_before = fleet.redis.zcard("chordflow:runs")
    changed = chordflow(url, "submit", file, "--idempotency-key", "k-1", "--set", "day=tue")
    assert changed.exit_code == 2
    assert "idempotency key 'k-1' was already used for run" in changed.stderr
    assert "day='mon' there, 'tue' here" in changed.stderr
    elsewhere = chordflow(url, "submit", other, "--idempotency-key", "k-1")
    assert elsewhere.exit_code == 2 and "of pipeline 'keyed'" in elsewhere.stderr
    assert fleet.redis.zcard("chordflow:runs") == runs_before  # nothing written


def test_status_of_a_cancelled_run_exits_1_and_does_not_say_it_is_done(fleet, tmp_path):
    stages = [{"id": f"s{i}", "uses": "sleep", "params": {"seconds": 30}} for i in range(3)]
    handle = fleet.client.submit(validate_data(pipeline("to-cancel", *stages)))
    wait_until(lambda: fleet.client.status(handle.run_id)["stages"]["s0"]["state"] == "running", timeout=30)
    assert chordflow(fleet.server.url, "cancel", handle.run_id).exit_code == 0
    shown = chordflow(fleet.server.url, "status", handle.run_id)
    assert shown.exit_code == 1  # as `watch` exits
    assert "100%" not in shown.stdout and "0/3 stages (0%) · 3 cancelled" in shown.stdout
    assert chordflow(fleet.server.url, "watch", handle.run_id).exit_code == 1


def test_logs_of_a_stage_that_failed_without_a_line_show_its_error(fleet):
    data = pipeline("broken", {"id": "count", "uses": "fail", "params": {"times": -1, "error": "KeyError"}})
    result = fleet.run(data)
    assert result.status == "failed"
    shown = chordflow(fleet.server.url, "logs", result.run_id)
    assert shown.exit_code == 0, shown.output
    assert "== count · attempt 1" in shown.stdout and "no log lines; its error:" in shown.stdout
    assert "KeyError" in shown.stdout and "Traceback" in shown.stdout
    as_json = chordflow(fleet.server.url, "logs", result.run_id, "count", "--json")
    lines = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert lines and {line["level"] for line in lines} == {"ERROR"}
    assert lines[0]["attempt"] == 1 and lines[0]["round"] == 0


def test_logs_item_beyond_a_fan_out_is_exit_2(fleet):
    data = pipeline(
        "three",
        {"id": "items", "uses": "noop", "params": {"output": [1, 2, 3]}},
        {"id": "each", "uses": "test.record", "needs": ["items"], "for_each": "items"},
    )
    result = fleet.run(data)
    assert result.status == "succeeded", result
    beyond = chordflow(fleet.server.url, "logs", result.run_id, "each", "--item", "7")
    assert beyond.exit_code == 2
    assert (
        "stage 'each' of run" in beyond.stderr and "has 3 items (0 to 2); there is no item 7" in beyond.stderr
    )
    plain = chordflow(fleet.server.url, "logs", result.run_id, "items", "--item", "0")
    assert plain.exit_code == 2 and "does not fan out" in plain.stderr
    assert chordflow(fleet.server.url, "logs", result.run_id, "each", "--item", "2").exit_code == 0


def test_logs_per_round_each_with_its_header_and_json_without_markers(fleet, tmp_path):
    flag = tmp_path / "ready"
    script = f"echo round-start; test -f {flag} && echo found || (echo missing; exit 1)"
    data = pipeline("rounds", {"id": "check", "uses": "shell", "run": ["sh", "-c", script]})
    first = fleet.run(data)
    assert first.status == "failed"
    flag.write_text("x")
    assert chordflow(fleet.server.url, "retry", first.run_id).exit_code == 0
    assert fleet.client.handle(first.run_id).wait(timeout=60).status == "succeeded"

    url = fleet.server.url
    both = chordflow(url, "logs", first.run_id, "check").stdout
    headers = [line for line in both.splitlines() if line.startswith("== check")]
    assert len(headers) == 2, both  # one header per round, not "run 2 times"
    assert "retry 1" not in headers[0] and "retry 1" in headers[1]
    assert both.index("missing") < both.index("found")
    before = chordflow(url, "logs", first.run_id, "check", "--round", "0").stdout
    after = chordflow(url, "logs", first.run_id, "check", "--round", "1").stdout
    assert "missing" in before and "found" not in before
    assert "found" in after and "missing" not in after
    lines = [json.loads(line) for line in chordflow(url, "logs", first.run_id, "--json").stdout.splitlines()]
    assert {line["level"] for line in lines} <= {"STDOUT", "STDERR", "INFO", "WARNING", "ERROR"}
    assert [line["round"] for line in lines if line["line"] == "found"] == [1]
    assert all(isinstance(line["attempt"], int) for line in lines)


def test_watch_json_gives_numbers_and_flags_typed(fleet):
    data = pipeline(
        "typed",
        {"id": "items", "uses": "noop", "params": {"output": [1, 2]}},
        {"id": "each", "uses": "test.record", "needs": ["items"], "for_each": "items"},
    )
    result = fleet.run(data)
    watched = chordflow(fleet.server.url, "watch", result.run_id, "--json", "--items")
    assert watched.exit_code == 0
    events = [json.loads(line)["event"] for line in watched.stdout.splitlines() if '"event"' in line]
    for event in events:
        for name in ("item", "attempt", "items"):
            assert name not in event or event[name] is None or isinstance(event[name], int), event
        assert "retry" not in event or isinstance(event["retry"], bool)
    assert {e["item"] for e in events if e.get("kind") == "item"} == {0, 1}


def test_retry_of_a_run_that_succeeded_says_so_in_words(fleet):
    result = fleet.run(pipeline("fine", {"id": "a", "uses": "noop"}))
    done = chordflow(fleet.server.url, "retry", result.run_id)
    assert done.exit_code == 1
    assert "not retried: the run succeeded; only a run that failed or was cancelled is retried" in done.stdout


def test_depends_on_a_pipeline_never_registered_is_flagged_and_pipelines_lists_lines(fleet, tmp_path):
    data = pipeline("needs-typo", {"id": "a", "uses": "noop"}, depends_on=[{"pipeline": "data-daly"}])
    file = write(tmp_path, data)
    done = chordflow(fleet.server.url, "submit", file, "--force")
    assert done.exit_code == 0, done.output
    assert (
        "warning: depends_on 'data-daly' names a pipeline that is not registered and never ran" in done.stderr
    )
    two = pipeline(
        "needs-two", {"id": "a", "uses": "noop"}, depends_on=[{"pipeline": "up-one"}, {"pipeline": "up-two"}]
    )
    assert chordflow(fleet.server.url, "pipelines", "add", write(tmp_path, two, "two.yaml")).exit_code == 0
    listed = chordflow(fleet.server.url, "pipelines")
    assert listed.exit_code == 0
    assert "\\x0a" not in listed.stdout and "up-one" in listed.stdout and "up-two" in listed.stdout


def test_a_worker_import_that_cannot_be_found_is_exit_2_with_a_hint(fleet, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = chordflow(fleet.server.url, "worker", "--import", "my_missing_stages")
    assert result.exit_code == 2, result.output
    assert "cannot import 'my_missing_stages' (--import): no such module" in result.output
    assert str(tmp_path) in result.output and "PYTHONPATH" in result.output
    assert "unexpected" not in result.output
