"""Hostile pipeline files (issue 10): each is refused by `validate`, `plan` and `submit` with exit 2
and a problem line, under a 1 GiB memory cap and a 10 s time cap, with no traceback and no
`unexpected ...`; `submit` refuses before it writes anything to Redis.

The files are data in `files/`; the ones too large to keep are written at test time.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from orchestration.fleet.embedded import RedisServer

FILES = Path(__file__).parent / "files"
REPO = Path(__file__).resolve().parents[2]
MEMORY_CAP = 1 << 30
TIME_CAP_S = 10.0
MAX_STAGES = 1500  # many_stages_matrix.yaml expands to 2,000 stages


def _generated(tmp: Path) -> dict[str, Path]:
    """Hostile files too large to keep in the repository."""
    made = {
        "integer_100000_digits": "name: hostile\nstages:\n  - id: a\n    uses: noop\n    params: {n: "
        + "1" * 100_000
        + "}\n",
        "timeout_400_digits": "name: hostile\nstages:\n  - id: a\n    uses: noop\n    timeout: "
        + "9" * 400
        + "\n",
        "deep_nesting": "name: hostile\nstages:\n  - id: a\n    uses: noop\n    params: {x: "
        + "[" * 10_000
        + "]" * 10_000
        + "}\n",
    }
    paths = {}
    for name, text in made.items():
        paths[name] = tmp / f"{name}.yaml"
        paths[name].write_text(text)
    big = tmp / "twenty_megabytes.yaml"
    with open(big, "w") as f:
        f.write("name: hostile\nstages:\n  - id: a\n    uses: noop\n    params: {pad: [\n")
        line = "      " + "x" * 90 + ",\n"
        f.writelines(line for _ in range(20 * 1024 * 1024 // len(line) + 1))
        f.write("    ]}\n")
    paths["twenty_megabytes"] = big
    return paths


HOSTILE = sorted(p for p in FILES.glob("*.yaml") if p.name != "argv_injection.yaml")


@pytest.fixture(scope="module")
def hostile_files(tmp_path_factory) -> dict[str, Path]:
    files = {p.stem: p for p in HOSTILE}
    files.update(_generated(tmp_path_factory.mktemp("hostile")))
    return files


@pytest.fixture(scope="module")
def redis_server():
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.stop()


def _capped() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


def _chordflow(*args: str, redis_url: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHORDFLOW_")}
    env["CHORDFLOW_MAX_STAGES"] = str(MAX_STAGES)
    if redis_url:
        env["CHORDFLOW_REDIS_URL"] = redis_url
    return subprocess.run(
        [sys.executable, "-m", "orchestration", *args],
        capture_output=True,
        text=True,
        timeout=TIME_CAP_S,
        preexec_fn=_capped,
        env=env,
        cwd=REPO,
        check=False,
    )


def _assert_refused(result: subprocess.CompletedProcess[str], name: str) -> None:
    out = result.stdout + result.stderr
    assert result.returncode == 2, f"{name}: exit {result.returncode}\n{out[-2000:]}"
    assert "problem" in result.stderr and "found:" in result.stderr, f"{name}: no problem line\n{out[-2000:]}"
    assert "Traceback" not in out and "unexpected" not in out, f"{name}:\n{out[-2000:]}"


NAMES = [p.stem for p in HOSTILE] + [
    "integer_100000_digits",
    "timeout_400_digits",
    "deep_nesting",
    "twenty_megabytes",
]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("command", ["validate", "plan"])
def test_hostile_file_is_refused(hostile_files, name, command):
    _assert_refused(_chordflow(command, str(hostile_files[name])), name)


@pytest.mark.parametrize("name", NAMES)
def test_hostile_file_is_refused_by_submit_before_redis_is_written(hostile_files, redis_server, name):
    client = redis.Redis.from_url(redis_server.url)
    before = set(client.keys("*"))
    _assert_refused(_chordflow("submit", str(hostile_files[name]), redis_url=redis_server.url), name)
    assert set(client.keys("*")) == before, "submit wrote to Redis before refusing"


def test_a_variable_cannot_add_arguments_through_set():
    """argv injection: `run: "touch out-${name}"` with --set 'name=x INJECTED' stays two arguments."""
    result = _chordflow(
        "submit", "--dry-run", "--json", str(FILES / "argv_injection.yaml"), "--set", "name=x INJECTED"
    )
    assert result.returncode == 0, result.stderr
    from orchestration.graph.resolve import resolve
    from orchestration.language.validation import load_pipeline

    spec = load_pipeline(FILES / "argv_injection.yaml", {"name": "x INJECTED"}, env={})
    assert resolve(spec).node("a").run == ("touch", "out-x INJECTED")
