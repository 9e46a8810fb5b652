"""`chordflow health` against a real Redis and a cpu-only worker; and the run history `plan` reads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import redis
import yaml

from orchestration.engine.placement import QueueUnserved
from orchestration.fleet import history
from orchestration.fleet.embedded import RedisServer, free_port
from orchestration.fleet.health import queue_lists, redis_warnings
from orchestration.graph.resolve import resolve
from orchestration.language.validation import validate_data
from orchestration.settings import Settings

from .conftest import ROOT, pipeline

CHORDFLOW = [sys.executable, "-m", "orchestration"]


def health(url: str, also_text: bool = True) -> tuple[int, dict, str]:
    """`chordflow health --json` (exit code, report) and, unless told not to, the text form's output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHORDFLOW_")}
    env.update(PYTHONPATH=str(ROOT), CHORDFLOW_REDIS_URL=url)
    as_json = subprocess.run(
        [*CHORDFLOW, "health", "--json"],
        check=False,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if not also_text:
        return as_json.returncode, json.loads(as_json.stdout), ""
    text = subprocess.run(
        [*CHORDFLOW, "health"], check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert text.returncode == as_json.returncode, text.stdout + text.stderr
    return as_json.returncode, json.loads(as_json.stdout), text.stdout + text.stderr


@pytest.fixture(scope="module")
def cpu_fleet(bare_cluster):
    """Redis and one worker that serves only the cpu queue."""
    bare_cluster.start_worker(queues=("cpu",), hostname="cpu-host")
    return bare_cluster


def test_a_fleet_with_work_only_where_workers_are_is_healthy(cpu_fleet):
    code, report, text = health(cpu_fleet.server.url)
    assert code == 0, text
    assert report["healthy"] and report["redis"]["reachable"]
    queues = {q["name"]: q for q in report["queues"]}
    assert queues["cpu"]["workers"] == ["cpu-host/main"] and queues["gpu"]["workers"] == []
    assert report["workers"]["cpu-host/main"]["machine"]["cpus"] >= 1
    # the test Redis runs without AOF: a loud warning, not a failure
    assert any("no AOF persistence" in w for w in report["warnings"])
    assert "WARNING: Redis has no AOF persistence" in text and "healthy" in text


def test_work_on_a_queue_no_live_worker_serves_is_unhealthy(cpu_fleet):
    # Given a GPU stage queued while only a cpu worker is alive
    spec = validate_data(pipeline("gpu-job", {"id": "train", "uses": "noop", "resources": {"gpu": 1}}))
    with pytest.warns(QueueUnserved, match="no live worker serves queue 'gpu': train"):
        handle = cpu_fleet.client.submit(spec, check_types=False)
    try:
        # When health runs, twice
        code, report, text = health(cpu_fleet.server.url)
        time.sleep(1.2)
        code_again, again, _ = health(cpu_fleet.server.url)

        # Then it exits non-zero and says which queue, how much work, and that no worker serves it
        assert code == code_again == 1
        gpu = {q["name"]: q for q in again["queues"]}["gpu"]
        assert gpu["waiting"] == 1 and gpu["workers"] == []
        assert handle.run_id in gpu["oldest_task"] and "'train'" in gpu["oldest_task"]
        # the oldest message's age is counted from the first check that saw it
        assert gpu["oldest_waiting_s"] >= 1.0
        assert any("queue 'gpu' has 1 message(s)" in p and "no live worker" in p for p in report["problems"])
        assert "UNHEALTHY: queue 'gpu'" in text and "chordflow worker --queues gpu" in text
    finally:
        cpu_fleet.client.cancel(handle.run_id)
        cpu_fleet.redis.delete(*queue_lists("gpu"))
    assert health(cpu_fleet.server.url)[0] == 0


def test_a_pipeline_whose_last_success_is_older_than_max_age_is_stale(cpu_fleet, tmp_path):
    # Given a pipeline with max_age 5s, scheduled (the schedule stores its max_age), that just succeeded
    data = pipeline("freshness", {"id": "only", "uses": "noop"}, max_age="5s")
    path = tmp_path / "freshness.yaml"
    path.write_text(yaml.safe_dump(data))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CHORDFLOW_REDIS_URL": cpu_fleet.server.url}
    added = subprocess.run(
        [*CHORDFLOW, "schedule", "add", str(path), "--every", "1h"],
        check=False,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert added.returncode == 0, added.stderr
    try:
        assert cpu_fleet.run(data).success
        code, report, _ = health(cpu_fleet.server.url, also_text=False)
        assert code == 0
        assert {p["pipeline"]: p["stale"] for p in report["pipelines"]} == {"freshness": False}

        # When more than max_age passes without another success
        time.sleep(5.5)
        code, report, text = health(cpu_fleet.server.url)

        # Then health reports it stale and exits non-zero
        assert code == 1
        stale = report["pipelines"][0]
        assert stale["stale"] and stale["max_age_s"] == 5 and stale["age_s"] > 5
        assert "UNHEALTHY: pipeline 'freshness' is stale" in text
    finally:
        subprocess.run(
            [*CHORDFLOW, "schedule", "remove", "freshness"], check=False, cwd=ROOT, env=env, timeout=60
        )


def test_a_pipeline_that_never_succeeded_within_max_age_is_stale(cpu_fleet):
    # Given a pipeline whose only run failed, its run record carrying max_age_s (as submit records it)
    data = pipeline(
        "never-ok", {"id": "only", "uses": "fail", "params": {"times": -1}, "retry": {"max_attempts": 1}}
    )
    result = cpu_fleet.run(data)
    assert not result.success
    cpu_fleet.redis.hset(f"{cpu_fleet.settings.key_prefix}:run:{result.run_id}", "max_age_s", "1")
    time.sleep(1.2)
    # Then health counts from when the pipeline was first known and reports it stale
    code, report, _ = health(cpu_fleet.server.url, also_text=False)
    assert code == 1
    never = {p["pipeline"]: p for p in report["pipelines"]}["never-ok"]
    assert never["stale"] and never["last_success_at"] is None
    assert any("'never-ok' is stale: it has not succeeded" in p for p in report["problems"])


def test_unreachable_redis_is_unhealthy():
    code, report, text = health(f"redis://127.0.0.1:{free_port()}/0")
    assert code == 1 and not report["redis"]["reachable"]
    assert "Redis unreachable" in report["problems"][0] and "UNHEALTHY: Redis unreachable" in text


def test_redis_warnings_name_missing_aof_and_an_eviction_policy():
    with RedisServer(appendonly=True) as durable:
        assert redis_warnings(redis.Redis.from_url(durable.url)) == []
    with RedisServer(extra=["--maxmemory-policy", "allkeys-lru"]) as evicting:
        warnings = redis_warnings(redis.Redis.from_url(evicting.url, decode_responses=True))
    assert len(warnings) == 2
    assert "appendonly yes" in warnings[0] and "maxmemory-policy allkeys-lru" in warnings[1]


# -- history (what plan's makespan estimate reads) -------------------------------------------------------


def test_stage_durations_are_medians_over_succeeded_runs(cpu_fleet):
    # Given three succeeded runs of a two-stage pipeline and one failed run
    data = pipeline(
        "timed",
        {"id": "slow", "uses": "sleep", "params": {"seconds": 0.4}},
        {"id": "quick", "uses": "noop", "needs": ["slow"]},
    )
    for _ in range(3):
        assert cpu_fleet.run(data).success
    failing = pipeline(
        "timed", {"id": "slow", "uses": "fail", "params": {"times": -1}, "retry": {"max_attempts": 1}}
    )
    assert not cpu_fleet.run(failing).success

    # When the history is read
    durations = history.stage_durations(cpu_fleet.client.store, "timed")

    # Then each stage has the median of its recorded durations, from succeeded runs only
    assert set(durations) == {"slow", "quick"}
    assert 0.35 <= durations["slow"] < 2.0
    assert durations["quick"] < durations["slow"]
    assert history.estimates(cpu_fleet.settings, "timed") == durations
    assert history.estimates(Settings(redis_url=None), "timed") == {}
    assert history.estimates(Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0"), "timed") == {}

    # And plan's makespan follows them instead of the 1s default per stage
    graph = resolve(validate_data(data), cpu_fleet.settings, estimates=durations)
    assert graph.makespan_s == pytest.approx(durations["slow"] + durations["quick"])
