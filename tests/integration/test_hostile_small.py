"""The small hostile inputs of issue 20 point 7 that this branch closes: `plan` escapes a pipeline
name's control characters; a context value or metric that is NaN or Infinity, or named by a huge
key, fails the stage at once with a clear error (not retried, nothing stored) and `status --json`
stays strict JSON; the worker refuses `--gpus -5` and `--memory-gb nan` with exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from orchestration.fleet.embedded import WorkerProcess

from .conftest import ARTIFACTS, ROOT, pipeline
from .pipelines_support import chordflow

pytestmark = pytest.mark.timeout(240)


def bare_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHORDFLOW_")}
    return {**env, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}


def test_plan_prints_a_names_escape_sequences_as_visible_text(tmp_path):
    # Given a file whose name and version hold escape sequences (clear screen, retitle, colour)
    path = tmp_path / "evil.yaml"
    path.write_text(
        'name: "evil\\e[2Jname\\e]0;pwned\\a"\nversion: "v\\e[31m1"\nstages:\n  - id: a\n    uses: noop\n'
    )

    # When it is planned
    done = subprocess.run(
        [sys.executable, "-m", "orchestration", "plan", str(path)],
        env=bare_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    # Then no control character reaches the terminal: they are shown as visible escapes
    assert done.returncode == 0, done.stderr
    assert "\x1b" not in done.stdout and "\x07" not in done.stdout
    assert "evil\\x1b[2Jname\\x1b]0;pwned\\x07 v\\x1b[31m1" in done.stdout


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--gpus", "-5"], "Invalid value for '--gpus'"),
        (["--memory-gb", "nan"], "Invalid value for '--memory-gb': nan is not a finite number"),
        (["--memory-gb", "inf"], "Invalid value for '--memory-gb': inf is not a finite number"),
        (["--memory-gb", "-2"], "Invalid value for '--memory-gb'"),
    ],
)
def test_the_worker_refuses_impossible_capacity(args, said):
    env = {**bare_env(), "CHORDFLOW_REDIS_URL": "redis://127.0.0.1:1/0"}  # never reached
    done = subprocess.run(
        [sys.executable, "-m", "workers", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert said in done.stderr


@pytest.fixture(scope="module")
def fleet(bare_cluster):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    worker = WorkerProcess(
        bare_cluster.server.url,
        ("cpu", "gpu", "highmem"),
        2,
        hostname="bad-context",
        imports=["tests.print_stages"],
        env={"PYTHONPATH": str(ROOT)},
        log_path=str(ARTIFACTS / f"worker-{os.getpid()}-bad-context.log"),
        loglevel="INFO",
    ).start()
    bare_cluster.workers.append(worker)
    bare_cluster.wait_workers(hostnames=["bad-context"])
    return bare_cluster


def strict(text: str) -> dict:
    """JSON as the standard says it: NaN and Infinity are not JSON."""

    def refuse(constant: str) -> None:
        raise AssertionError(f"bare {constant} in the JSON")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize(
    ("kind", "said"),
    [
        ("nan_value", "context value 'score' holds a number that is not finite"),
        ("inf_incr", "context value 'total': inf is not a finite number"),
        ("long_key", "bytes, over this worker's cap of 1,024 (context_key_cap_bytes)"),
        ("long_metric", "a metric 'mmmm"),
        ("inf_metric", "metric 'rows': -inf is not a finite number"),
    ],
)
def test_a_context_write_that_is_not_finite_or_has_a_huge_key_fails_at_once(fleet, kind, said):
    # Given a stage that writes a context value or metric a worker must refuse
    data = pipeline(
        f"bad-{kind.replace('_', '-')}",
        {"id": "w", "uses": "test.bad_context", "params": {"kind": kind}, "retry": {"max_attempts": 3}},
    )
    result = fleet.run(data, timeout=60)

    # Then the stage failed once, not retried, saying what is wrong
    assert result.status == "failed"
    assert fleet.count(result.run_id, "w") == 1
    error = result.stage_results["w"]["error"]
    assert error["type"] == "InvalidContextWrite" and said in error["message"], error
    assert len(error["message"]) < 1000  # the 20 MB name is not repeated
    # and nothing was stored: no context value, no metric
    assert fleet.client.store.runs.context(result.run_id) == {}
    assert fleet.client.store.runs.metrics(result.run_id) == {}
    # and `status --json` is strict JSON
    done = chordflow(fleet, "status", result.run_id, "--json")
    assert strict(done.stdout)["status"] == "failed"
