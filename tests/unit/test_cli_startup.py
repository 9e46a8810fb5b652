"""The command line imports what a command uses: printing help, checking a file or planning it
without a Redis loads neither Celery, kombu nor redis (they cost most of a second to import)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "quickstart.yaml"

# Runs a command in a fresh interpreter, then prints which of the heavy packages it imported.
PROBE = """
import contextlib, io, json, sys
from orchestration.cli.main import main
with contextlib.redirect_stdout(io.StringIO()):
    code = main(sys.argv[1:])
heavy = sorted({name.split(".")[0] for name in sys.modules} & {"celery", "kombu", "redis"})
print(json.dumps({"code": code, "heavy": heavy}))
"""


def _probe(*args: str, cwd: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHORDFLOW_")}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["validate", str(EXAMPLE)],
        ["validate", "--help"],
        ["plan", str(EXAMPLE)],
        ["plan", str(EXAMPLE), "--json"],
        ["graph", str(EXAMPLE)],
        ["schema"],
        ["templates"],
        ["init", "--template", "analysis-dag", "new.yaml"],
    ],
    ids=lambda args: " ".join(a for a in args if not a.startswith("/")),
)
def test_commands_without_a_redis_import_neither_celery_kombu_nor_redis(args, tmp_path):
    result = _probe(*args, cwd=tmp_path)
    assert result["code"] == 0
    assert result["heavy"] == []


def test_a_command_on_a_run_still_loads_the_client(tmp_path):
    # the probe can see an import: `status --help` of a Redis command loads the module that needs redis
    result = _probe("status", "--help", cwd=tmp_path)
    assert result["code"] == 0
    assert "redis" in result["heavy"]


def test_an_unknown_key_is_matched_against_the_keys_where_it_is(tmp_path):
    file = tmp_path / "p.yaml"
    file.write_text("name: g\nstages:\n  - {id: t, uses: noop, resources: {gpus: 1}}\n", encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "orchestration", "validate", str(file)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "unknown key 'gpus' (did you mean 'gpu'?)" in done.stderr and "inputs" not in done.stderr


def test_init_onto_an_existing_file_is_invalid_input(tmp_path):
    (tmp_path / "etl.yaml").write_text("mine\n", encoding="utf-8")
    result = _probe("init", "--template", "daily-chain", "etl.yaml", cwd=tmp_path)
    assert result["code"] == 2
    assert (tmp_path / "etl.yaml").read_text(encoding="utf-8") == "mine\n"


def test_every_built_in_command_loads_under_its_name_with_the_help_the_list_shows():
    import click

    from orchestration.cli.main import BUILTIN, cli, summary

    context = click.Context(cli)
    for name, target in BUILTIN.items():
        command = cli.get_command(context, name)
        assert isinstance(command, click.Command) and command.name == name, target
        assert summary(target) is not None and command.help is not None
        assert command.help.startswith(summary(target)[:40]), name
