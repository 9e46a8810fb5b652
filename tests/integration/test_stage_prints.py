"""A Python stage's output goes where users look (issue 21 point 1, issue 20 point 6): its print(),
its stderr and its logging records reach its live log stream while it runs; a failed attempt's log
ends with its traceback; the worker's own log gets a bounded copy of `ctx.log`; `logs` says exactly
how many lines were not kept. Real redis-server, real worker processes, the `chordflow` command."""

from __future__ import annotations

import functools
import os
import re
import subprocess
import time

import pytest

from orchestration.engine.store import RunStore, connect
from orchestration.fleet.embedded import WorkerProcess
from orchestration.language.validation import validate_data
from orchestration.settings import Settings
from workers.livelog import AttemptLog

from .conftest import ARTIFACTS, ROOT, pipeline, wait_until
from .pipelines_support import chordflow

pytestmark = pytest.mark.timeout(240)


def worker(cluster, name: str, env: dict[str, str] | None = None) -> WorkerProcess:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    started = WorkerProcess(
        cluster.server.url,
        ("cpu", "gpu", "highmem"),
        2,
        hostname=name,
        imports=["tests.print_stages"],
        env={"PYTHONPATH": str(ROOT), **(env or {})},
        log_path=str(ARTIFACTS / f"worker-prints-{os.getpid()}-{name}.log"),
        loglevel="INFO",
    ).start()
    cluster.workers.append(started)
    cluster.wait_workers(hostnames=[name])
    return started


def worker_log(name: str) -> str:
    return (ARTIFACTS / f"worker-prints-{os.getpid()}-{name}.log").read_text(errors="replace")


def logs(cluster, *args: str) -> subprocess.CompletedProcess:
    return chordflow(cluster, "logs", *args)


def test_print_reaches_the_live_log_while_the_stage_runs(bare_cluster):
    cluster = bare_cluster
    talker = worker(cluster, "prints")
    try:
        _print_reaches_the_live_log(cluster)
    finally:
        talker.stop()


def _print_reaches_the_live_log(cluster) -> None:
    # Given a Python stage that prints 5 lines over 5 s
    handle = cluster.client.submit(
        validate_data(pipeline("printing", {"id": "talk", "uses": "test.prints", "params": {"lines": 5}}))
    )

    # When `chordflow logs RUN STAGE` is asked while it runs
    def printed_so_far() -> list[str]:
        done = logs(cluster, handle.run_id, "talk")
        return re.findall(r"print line \d", done.stdout)

    seen = wait_until(lambda: len(printed_so_far()) >= 2, timeout=30, interval=0.3)
    # Then it shows 2 or more of them while the run is still going
    assert cluster.client.store.runs.run_status(handle.run_id) == "running", seen
    result = handle.wait(timeout=60)
    assert result.status == "succeeded"

    # and in the end all 5, the stderr line and the logging record, with their levels
    out = logs(cluster, handle.run_id, "talk").stdout
    assert re.findall(r"print line \d", out) == [f"print line {i}" for i in range(5)]
    assert re.search(r"STDERR? +to stderr", out) or "to stderr" in out, out
    assert "a logging record from the stage's own logger" in out
    # and not in the worker's own log as a WARNING of Celery's redirection
    assert "print line 0" not in worker_log("prints")


def test_a_failed_attempt_log_ends_with_its_traceback(bare_cluster):
    cluster = bare_cluster
    raiser = worker(cluster, "raises")
    # Given a stage that prints, then raises KeyError('count') in a helper
    try:
        result = cluster.run(
            pipeline("raising", {"id": "boom", "uses": "test.prints_then_raises"}), timeout=60
        )
    finally:
        raiser.stop()
    assert result.status == "failed"

    # Then its log shows the print, then the traceback, ending with the error
    out = logs(cluster, result.run_id, "boom").stdout
    lines = [line for line in out.splitlines() if line.strip() and not line.startswith("==")]
    assert "about to fail" in out
    assert "Traceback (most recent call last)" in out and 'return data["count"]' in out
    assert lines[-1].endswith("KeyError: 'count'"), lines[-3:]


def test_the_worker_log_gets_a_bounded_copy_and_logs_counts_exactly(bare_cluster):
    cluster = bare_cluster
    env = {
        "CHORDFLOW_LOG_LINES_CAP": "30",
        "CHORDFLOW_WORKER_LOG_LINES_PER_ATTEMPT": "50",
        "CHORDFLOW_WORKER_LOG_LINE_BYTES": "300",
    }
    worker(cluster, "floods", env)
    total = 100_000
    # Given a stage that ctx.logs one 2 MB line and then 100,000 lines as fast as it can
    result = cluster.run(
        pipeline(
            "flooding",
            {"id": "flood", "uses": "test.floods", "params": {"lines": total, "long_bytes": 2_000_000}},
        ),
        timeout=120,
    )
    assert result.status == "succeeded"

    # Then the worker's own log has the first 50 lines of it, none longer than the cap, and a note
    time.sleep(0.5)
    mine = [line for line in worker_log("floods").splitlines() if f"[{result.run_id}/flood]" in line]
    assert 50 <= len(mine) <= 51, len(mine)
    assert max(len(line.encode()) for line in mine) < 300 + 200  # the cap plus the log format's prefix
    assert any("not copied to the worker log" in line for line in mine)
    assert len(worker_log("floods").encode()) < 1_000_000

    # and `logs` says exactly how many lines were not kept: with those it shows, every line written
    out = logs(cluster, result.run_id, "flood").stdout
    said = re.search(r"… ([\d,]+) earlier lines not kept", out)
    assert said, out
    shown = len(re.findall(r"flood line \d+", out))
    assert int(said.group(1).replace(",", "")) + shown == total + 1, (said.group(0), shown)  # + the long line


@pytest.mark.parametrize("cap", [30, 1000, 5000])  # 1000 and more: Redis trims approximately
def test_lines_not_kept_are_counted_exactly_whatever_the_trimming(bare_cluster, cap):
    """Bursts of lines, some larger than the cap between two sends (dropped by the worker), some
    trimmed by the stream: what `logs` computes (sent minus the kept count) plus the lines kept is
    every line written."""
    settings = Settings(redis_url=bare_cluster.server.url, log_lines_cap=cap)
    store = RunStore(connect(settings), settings)
    run_id = f"exact-{cap}"
    log = AttemptLog(
        functools.partial(store.logs.write_attempt_log, run_id, "st", None, 1), cap=cap, flush_s=0.05
    )
    total = 0
    for burst in range(40):
        n = (burst * 937) % 7000 + 1
        log.add_many([f"line {total + i}" for i in range(n)], "INFO")
        total += n
        time.sleep(0.12 if burst % 3 == 0 else 0.01)
    log.close({"outcome": "succeeded"})
    info = store.logs.attempt_log_index(run_id, ["st"])["st"][0]
    not_kept = info.sent - store.logs.attempt_log_lengths(run_id, [("st", None, 1)])[0]
    kept = [e.text for e in store.logs.attempt_log(run_id, "st", None, 1) if e.text.startswith("line ")]
    assert kept[-1] == f"line {total - 1}"
    assert not_kept + len(kept) == total, (not_kept, len(kept), total)
