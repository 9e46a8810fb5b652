"""Ids from users are checked where they come in (CLI, Client) before they reach a Redis key."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from orchestration.api import Client
from orchestration.cli.main import cli
from orchestration.engine.store import new_run_id
from orchestration.errors import InvalidPipeline
from orchestration.fleet.embedded import free_port
from orchestration.fleet.schedules import idempotency_key
from orchestration.language.ids import InvalidId, check_idempotency_key, check_run_id, check_stage_id
from orchestration.language.validation import validate_data
from orchestration.settings import Settings

NOWHERE = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens: a check that reached Redis would fail


@pytest.mark.parametrize("run_id", [new_run_id(), "r18f2a3b4c5d6e7f8", "nightly-2024.01_02", "a" * 128, "0"])
def test_run_ids_we_make_or_users_choose_are_accepted(run_id):
    assert check_run_id(run_id) == run_id


@pytest.mark.parametrize(
    ("run_id", "why"),
    [
        ("r1:states", "contains ':'"),
        ("r1\n", "contains '\\n'"),
        ("r1 ", "contains ' '"),
        ("", "it is empty"),
        ("-r1", "starts with '-'"),
        (".r1", "starts with '.'"),
        ("_r1", "starts with '_'"),
        ("r*", "contains '*'"),
        ("r1/../r2", "contains '/'"),
        ("a" * 129, "129 characters"),
        (None, "NoneType, not text"),
        (17, "int, not text"),
    ],
)
def test_malformed_run_ids_are_refused_saying_what_is_wrong(run_id, why):
    with pytest.raises(InvalidId) as caught:
        check_run_id(run_id)
    assert why in str(caught.value) and "run id" in str(caught.value)
    assert caught.value.exit_code == 2 and isinstance(caught.value, ValueError)


def test_stage_ids_follow_the_pipeline_files_rule_and_refuse_a_trailing_newline():
    assert check_stage_id("_private.step-1") == "_private.step-1"
    for bad in ("a:b", "a\n", "-a", "", "a" * 129):
        with pytest.raises(InvalidId):
            check_stage_id(bad)
    # and the pipeline file refuses what the CLI refuses (a `$` would have let "a\n" through)
    with pytest.raises(InvalidPipeline, match="stage id"):
        validate_data({"name": "p", "stages": [{"id": "a\n", "uses": "noop"}]})


def test_idempotency_keys_allow_the_schedulers_keys_and_refuse_the_rest():
    assert (
        check_idempotency_key(idempotency_key("nightly.run_1", 1700000040))
        == "schedule:nightly.run_1:1700000040"
    )
    assert check_idempotency_key("deploy:" + "x" * 249)
    for bad in ("", ":x", "k\n", "k y", "k*", "x" * 257):
        with pytest.raises(InvalidId, match="idempotency key"):
            check_idempotency_key(bad)


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), env={"CHORDFLOW_REDIS_URL": NOWHERE, "COLUMNS": "200"})


@pytest.mark.parametrize(
    "args",
    [
        ["cancel", "r1:states"],
        ["pause", "r1:states"],
        ["resume", "r1:states"],
        ["retry", "r1:states"],
        ["status", "r1:states"],
        ["watch", "r1\n"],
        ["logs", "r1:outputs"],
        ["logs", "r1", "a:b"],
    ],
)
def test_the_cli_refuses_malformed_ids_with_exit_2_before_touching_redis(args):
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    assert "is not valid" in result.stderr and ("run id" in result.stderr or "stage id" in result.stderr)
    assert "Traceback" not in result.output


def test_status_json_reports_the_refusal_for_programs():
    result = invoke("status", "r1:states", "--json")
    assert result.exit_code == 2
    assert json.loads(result.stdout)["error"] == "InvalidId"


def test_submit_refuses_a_malformed_idempotency_key_with_exit_2(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("name: p\nstages: [{id: a, uses: noop}]\n")
    result = invoke("submit", str(path), "--idempotency-key", "k\n")
    assert result.exit_code == 2, result.output
    assert "idempotency key" in result.stderr


def test_the_client_refuses_malformed_ids_before_touching_redis():
    client = Client(Settings(redis_url=NOWHERE))
    for method in (
        client.cancel,
        client.pause,
        client.resume,
        client.retry,
        client.status,
        client.handle,
        client.result,
        client.follow,
    ):
        with pytest.raises(InvalidId):
            method("r1:states")
    spec = validate_data({"name": "p", "stages": [{"id": "a", "uses": "noop"}]})
    with pytest.raises(InvalidId):
        client.submit(spec, check_types=False, idempotency_key="k y")
