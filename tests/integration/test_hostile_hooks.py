"""Hook delivery is isolated per endpoint (issue 20, point 5): one file with `events: ["*"]` and two
dead webhook URLs (one accepts and never answers, one refuses connections) stalls neither another
pipeline's trigger nor another endpoint; a URL that keeps failing is skipped for a cool-off (its
circuit opens) and the worker log says so. Real redis-server, real worker processes with the
default delivery settings unless a test says otherwise."""

from __future__ import annotations

import time

import pytest

from orchestration.language.validation import validate_data

from .conftest import pipeline, wait_until
from .pipelines_support import chordflow, plain_worker, runs_of, write
from .test_hook_outbox import _BlackHole, _refused_port, _worker_log

pytestmark = pytest.mark.timeout(300)


def noisy(name: str, urls: list[str], stages: int = 5) -> dict:
    """A pipeline of `stages` noops whose every event goes to every one of `urls`."""
    return pipeline(
        name,
        *[{"id": f"s{i}", "uses": "noop"} for i in range(stages)],
        webhooks=[{"url": url, "events": ["*"], "timeout": "10s"} for url in urls],
    )


def test_two_dead_endpoints_do_not_delay_another_pipelines_trigger(bare_cluster, tmp_path):
    cluster = bare_cluster
    worker = plain_worker(cluster, "hooks-isolated")
    hole = _BlackHole()
    try:
        # Given a run whose every event goes to two dead endpoints (default 60 s per delivery),
        # the sender busy with them
        dead = [hole.url, f"http://127.0.0.1:{_refused_port()}/gone"]
        noisy_run = cluster.client.submit(validate_data(noisy("dead-hooks", dead))).wait(timeout=120)
        assert noisy_run.status == "succeeded"
        wait_until(lambda: hole.accepted, timeout=30)

        # and two registered pipelines: a success of iso-a triggers iso-b
        a = write(tmp_path, "iso-a")
        b = write(tmp_path, "iso-b", triggers=[{"on_success_of": "iso-a"}])
        for path in (a, b):
            done = chordflow(cluster, "pipelines", "add", path)
            assert done.returncode == 0, done.stderr

        # When iso-a succeeds
        result = cluster.client.submit(
            validate_data({"name": "iso-a", "stages": [{"id": "only", "uses": "noop"}]})
        )
        a_run = result.wait(timeout=60)
        assert a_run.status == "succeeded"
        finished_at = float(
            cluster.redis.hget(f"{cluster.settings.key_prefix}:run:{a_run.run_id}", "finished_at")
        )

        # Then iso-b's run is submitted within 2 s of iso-a's end, and succeeds
        b_runs = wait_until(lambda: runs_of(cluster, "iso-b"), timeout=30)
        assert len(b_runs) == 1 and b_runs[0]["triggered_by"] == a_run.run_id
        assert float(b_runs[0]["created_at"]) - finished_at <= 2.0, (b_runs[0]["created_at"], finished_at)
        wait_until(lambda: runs_of(cluster, "iso-b")[0]["status"] == "succeeded", timeout=60)
    finally:
        worker.stop()
        hole.close()


def test_a_url_that_keeps_failing_opens_its_circuit_and_is_skipped(bare_cluster):
    cluster = bare_cluster
    quick = {"CHORDFLOW_WEBHOOK_TOTAL_S": "0.5", "CHORDFLOW_WEBHOOK_BREAKER_FAILURES": "3"}
    worker = plain_worker(cluster, "hooks-breaker", env=quick)
    hole = _BlackHole()
    try:
        # Given a run of 10 stages (22 events) whose events all go to an endpoint that never answers
        data = noisy("breaker", [hole.url], stages=10)
        data["webhooks"][0]["timeout"] = "1s"
        started = time.monotonic()
        run = cluster.client.submit(validate_data(data)).wait(timeout=120)
        assert run.status == "succeeded"

        # Then after 3 failed deliveries its circuit opens: the rest are skipped, not tried
        log_name = "hooks-breaker"
        wait_until(lambda: "failed 3 times in a row: its circuit opens" in _worker_log(log_name), 60, 0.2)
        wait_until(lambda: _worker_log(log_name).count(f"of run {run.run_id} skipped") >= 15, 60, 0.2)
        assert len(hole.accepted) <= 6, len(hole.accepted)  # 3 deliveries, a retry or so each
        # and every event of the run was dealt with well before 22 deliveries of 1 s each
        assert time.monotonic() - started < 20
        wait_until(
            lambda: (
                not [
                    e
                    for _, e in cluster.redis.xrange(f"{cluster.settings.key_prefix}:hooks")
                    if run.run_id in e["e"]
                ]
            ),
            30,
        )
    finally:
        worker.stop()
        hole.close()
