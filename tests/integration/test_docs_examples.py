"""Every command example of docs/cli.md and README.md, run as written against a real Redis and real
workers, in the order the documents give them (README first: a new user reads it first).

An example is a line of a fenced block that starts with `$ `. It runs in `bash -o pipefail` in a
project directory holding the files the examples name (`pipeline.yaml`, `train.yaml`, ...), with
`examples/` and `.venv/` of this checkout. A line with a `# illustrative` comment is skipped (it
serves until stopped, or needs Docker or the whole suite); one with a `# exit N` comment must exit
N; `EXIT` below says which examples exit non-zero in this scenario, and why; every other one
exits 0. The lines a block shows under a command must start lines of what it printed (times of
day and the placeholder run id replaced). The placeholder run id `r18c9a2f3e1d0a7b6c` is a run of
`pipeline.yaml` that failed at its last stage (so `status` exits 1 and `retry --follow` has
something to retry)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from orchestration.language.validation import validate_data

from .conftest import ROOT

DOCS = [ROOT / "README.md", ROOT / "docs" / "cli.md"]
PLACEHOLDER = "r18c9a2f3e1d0a7b6c"
TIME_OF_DAY = re.compile(r"\b\d\d:\d\d:\d\d\.\d{3}\b")
EXIT_COMMENT = re.compile(r"#\s*exit (\d+)")

# what exits non-zero in this scenario, and why (the docs say so in their text)
EXIT = {
    f"chordflow status {PLACEHOLDER}": 1,  # "Exit 1 if the run failed"
    f"chordflow status {PLACEHOLDER} --json | jq '.stages.fetch.attempt_history[] | "
    "{attempt, outcome, error: .error.message}'": 1,
    f"chordflow watch {PLACEHOLDER} --json | jq -c 'select(.event.kind == \"run\") | .event'": 1,  # "1 if not"
    f"chordflow cancel {PLACEHOLDER} --json": 1,  # "Exit 1 if the run had already ended"
    f"chordflow pause {PLACEHOLDER}": 1,  # the run had ended: nothing to pause
    f"chordflow resume {PLACEHOLDER}": 1,  # nor to resume
}

# the placeholder run's pipeline: a flaky fetch (2 attempts), a build that prints, an 8-item
# fan-out, and a report that fails until the file `ready` exists
DEMO = {
    "name": "demo",
    "pools": {"db": 2},
    "stages": [
        {"id": "fetch", "uses": "test.flaky", "params": {"fail_times": 1}},
        {
            "id": "build",
            "uses": "shell",
            "needs": ["fetch"],
            "run": ["sh", "-c", "echo compiling 12 modules; echo \"module 'legacy' is deprecated\" >&2"],
        },
        {"id": "items", "uses": "noop", "params": {"output": list(range(8))}},
        {"id": "metrics", "uses": "test.record", "needs": ["items"], "for_each": "items", "pool": "db"},
        {
            "id": "report",
            "uses": "shell",
            "needs": ["build", "metrics"],
            "run": ["test", "-f", "ready"],
            "retry": {"max_attempts": 1},
        },
    ],
}
BROKEN = """\
name: broken
stages:
  - id: data
    uses: noop
  - id: a
    uses: noop
    needs: [b]
  - id: b
    uses: noop
    needs: [a]
  - id: c
    uses: noop
    needs: [dat]
  - id: d
    uses: noop
    timeout: 5x
"""


@dataclass(frozen=True)
class Example:
    where: str  # README.md:19
    command: str
    shows: tuple[str, ...]  # the lines the block shows under it

    @property
    def illustrative(self) -> bool:
        return "# illustrative" in self.command

    @property
    def expected_exit(self) -> int:
        declared = EXIT_COMMENT.search(self.command)
        if declared:
            return int(declared[1])
        return EXIT.get(self.command.split("  #")[0].strip(), 0)


def examples() -> list[Example]:
    found = []
    for doc in DOCS:
        lines = doc.read_text(encoding="utf-8").splitlines()
        fenced, language, current = False, "", None
        for number, line in enumerate(lines, start=1):
            if line.startswith("```"):
                fenced, language = not fenced, line[3:].strip()
                current = None
                continue
            if not fenced or language in ("yaml", "python", "json"):
                continue
            if line.startswith("$ "):
                current = Example(f"{doc.name}:{number}", line[2:], ())
                found.append(current)
            elif current is not None and line.strip():
                found[-1] = current = Example(current.where, current.command, (*current.shows, line))
    return found


@pytest.fixture(scope="module")
def project(bare_cluster, tmp_path_factory):
    """A worker serving every queue with 2 GPUs, a project directory, and the placeholder run."""
    bare_cluster.start_worker(gpus=2, concurrency=3)
    where = tmp_path_factory.mktemp("project")
    (where / "examples").symlink_to(ROOT / "examples")
    (where / ".venv").symlink_to(sys.prefix)  # this venv: `.venv/bin/chordflow` is this checkout
    # the report's `test -f` runs in the worker's directory: the flag's path is absolute
    demo = {
        **DEMO,
        "stages": [*DEMO["stages"][:-1], {**DEMO["stages"][-1], "run": ["test", "-f", str(where / "ready")]}],
    }
    (where / "pipeline.yaml").write_text(yaml.safe_dump(demo), encoding="utf-8")
    train = {"name": "train", "stages": [{"id": "train", "uses": "noop", "resources": {"gpu": 4}}]}
    (where / "train.yaml").write_text(yaml.safe_dump(train), encoding="utf-8")
    (where / "nightly.yaml").write_text("name: nightly\nstages:\n  - {id: a, uses: noop}\n", encoding="utf-8")
    shutil.copy(ROOT / "examples" / "market-weekly.yaml", where / "market-weekly.yaml")
    (where / "broken.yaml").write_text(BROKEN, encoding="utf-8")
    run = bare_cluster.client.submit(validate_data(demo)).wait(timeout=120)
    assert run.status == "failed" and run.failed == ["report"], run
    (where / "ready").write_text("", encoding="utf-8")
    return bare_cluster, where, run.run_id


@pytest.mark.parametrize("example", examples(), ids=lambda e: e.where)
def test_every_documented_command_runs_as_written(example, project):
    if example.illustrative:
        pytest.skip(f"marked illustrative in the docs: {example.command}")
    cluster, where, run_id = project
    for tool in ("jq", "dot"):
        if f"| {tool} " in example.command and shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHORDFLOW_")}
    env.update(
        CHORDFLOW_REDIS_URL=cluster.server.url,
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        COLUMNS="200",
    )
    command = example.command.replace(PLACEHOLDER, run_id)
    done = subprocess.run(
        ["bash", "-o", "pipefail", "-c", command],
        cwd=where,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    said = done.stdout + done.stderr
    assert done.returncode == example.expected_exit, f"{example.where}: {command}\n{said}"
    assert "unexpected" not in said and "Traceback" not in said, said
    printed = [TIME_OF_DAY.sub("T", line).rstrip() for line in said.splitlines()]
    for shown in example.shows:
        wanted = TIME_OF_DAY.sub("T", shown.replace(PLACEHOLDER, run_id)).rstrip()
        assert any(line.startswith(wanted) for line in printed), f"{example.where}: {wanted!r} not in\n{said}"
