"""One schema for the `--json` of every command: times as ISO 8601 strings in UTC (a `*_at` key,
`t`, `at`, `tick`, `seen`: null or ISO), numbers as numbers (no number in a string, no epoch number
anywhere), errors as objects. Every command that takes `--json` is run against a real Redis and a
real worker, and what it prints is checked against the schema."""

from __future__ import annotations

import json

import pytest
import yaml
from click.testing import CliRunner
from jsonschema import Draft202012Validator

from orchestration.cli.main import cli

from .conftest import pipeline

ISO = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$"
NUMBER_TEXT = r"^-?\d+(\.\d+)?$"
# keys whose values are the user's own text or data: a number in a string there is what they wrote
FREE = ("version", "line", "message", "output", "outputs", "sets", "variables", "params", "text", "reason")

SCHEMA = {
    "$defs": {
        "time": {"anyOf": [{"type": "null"}, {"type": "string", "pattern": ISO}]},
        "value": {
            "anyOf": [
                {
                    "type": "object",
                    "properties": {key: {} for key in FREE},
                    "patternProperties": {"(_at|^t|^at|^tick|^seen)$": {"$ref": "#/$defs/time"}},
                    "additionalProperties": {"$ref": "#/$defs/value"},
                },
                {"type": "array", "items": {"$ref": "#/$defs/value"}},
                {"type": "string", "not": {"pattern": NUMBER_TEXT}},
                # an epoch time (2001..2286) as a bare number is a time that was not made ISO
                {"type": "number", "not": {"minimum": 1e9, "maximum": 1e10}},
                {"type": ["boolean", "null"]},
            ]
        },
    },
    "$ref": "#/$defs/value",
}
VALIDATOR = Draft202012Validator(SCHEMA)


def chordflow(url: str, *args: str):
    return CliRunner().invoke(cli, list(args), env={"CHORDFLOW_REDIS_URL": url, "COLUMNS": "200"})


def documents(output: str) -> list:
    """What a command printed: one JSON document, or one per line (a stream)."""
    try:
        return [json.loads(output)]
    except json.JSONDecodeError:
        return [json.loads(line) for line in output.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def world(bare_cluster, tmp_path_factory):
    """A worker, a finished run with a retried stage, a fan-out and a failure, a schedule, a
    registered pipeline providing an asset, and a chain."""
    bare_cluster.start_worker(hostname="w0", concurrency=3)
    where = tmp_path_factory.mktemp("json")
    run = pipeline(
        "json-run",
        {"id": "fetch", "uses": "test.flaky", "params": {"fail_times": 1}},
        {"id": "items", "uses": "noop", "params": {"output": [1, 2, 3]}},
        {"id": "each", "uses": "test.record", "needs": ["items"], "for_each": "items"},
        {"id": "log", "uses": "shell", "run": ["echo", "42"]},
        {"id": "broken", "uses": "fail", "needs": ["fetch"], "params": {"times": -1}, "critical": False},
        provides=["numbers"],
    )
    (where / "run.yaml").write_text(yaml.safe_dump(run), encoding="utf-8")
    (where / "up.yaml").write_text(yaml.safe_dump(pipeline("json-up", {"id": "a", "uses": "noop"})))
    return bare_cluster, where


def commands(run_id: str, where) -> list[list[str]]:
    run, up = str(where / "run.yaml"), str(where / "up.yaml")
    return [
        ["validate", run, "--json"],
        ["plan", run, "--json"],
        ["templates", "--json"],
        ["status", run_id, "--json"],
        ["status", run_id, "--items", "--json"],
        ["watch", run_id, "--json", "--items"],
        ["runs", "--json"],
        ["logs", run_id, "--json"],
        ["stages", "--json"],
        ["health", "--json"],
        ["health", "--worker", "w0", "--json"],
        ["schedule", "add", up, "--every", "1h", "--json"],
        ["schedule", "list", "--json"],
        ["pipelines", "add", run, "--json"],
        ["pipelines", "--json"],
        ["assets", "--json"],
        ["chain", "run", "json-up", "--json"],
        ["chain", "status", "--json"],
        ["cancel", run_id, "--json"],
        ["pause", run_id, "--json"],
        ["resume", run_id, "--json"],
        ["retry", run_id, "--json"],
        ["status", "r-no-such-run", "--json"],  # an error, as JSON
    ]


def test_every_json_output_passes_one_schema(world):
    cluster, where = world
    submitted = chordflow(cluster.server.url, "submit", str(where / "run.yaml"), "--wait", "--json")
    assert submitted.exit_code == 0, submitted.output
    run_id = json.loads(submitted.stdout)["run_id"]
    checked = []
    for args in commands(run_id, where):
        done = chordflow(cluster.server.url, *args)
        assert done.stdout.strip(), (args, done.output)
        for document in documents(done.stdout):
            errors = sorted(VALIDATOR.iter_errors(document), key=lambda e: list(e.absolute_path))
            assert not errors, (args, [(list(e.absolute_path), e.instance) for e in errors[:5]])
        checked.append(args[0])
    assert len(checked) == len(commands(run_id, where))


def test_the_schema_catches_what_it_is_for():
    assert not VALIDATOR.is_valid({"created_at": 1_800_000_000.0})  # an epoch time
    assert not VALIDATOR.is_valid({"item": "1"})  # a number in a string
    assert not VALIDATOR.is_valid({"stages": [{"finished_at": "yesterday"}]})
    assert VALIDATOR.is_valid({"created_at": "2027-01-15T08:00:00.000Z", "item": 1, "version": "1"})
