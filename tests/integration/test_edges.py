"""Input at the edges, against a real Redis and real workers: ids that would name other runs' keys,
a Redis that refuses writes, a fallback of null, a stage type no worker serves, and a failed
`critical: false` stage (its dependents run, as docs/pipeline-file.md says)."""

from __future__ import annotations

import json
import os
import time

import redis
from click.testing import CliRunner

from orchestration.cli.main import cli
from orchestration.fleet.embedded import RedisServer, WorkerProcess
from orchestration.graph.resolve import RunGraph
from orchestration.language.options import Fallback
from orchestration.language.validation import validate_data

from .conftest import ARTIFACTS, ROOT, Cluster, pipeline, wait_until


def chordflow(url: str, *args: str):
    """`chordflow ARGS` in this process (click's runner), on the Redis at `url`."""
    return CliRunner().invoke(cli, list(args), env={"CHORDFLOW_REDIS_URL": url, "COLUMNS": "200"})


def status_json(url: str, run_id: str) -> dict:
    result = chordflow(url, "status", run_id, "--json")
    assert result.exit_code in (0, 1), result.output
    return json.loads(result.stdout)


# -- 1. ids from users ----------------------------------------------------------------------------------


def test_cancel_of_a_key_suffixed_id_is_refused_and_leaves_the_real_run_alone(cluster):
    # Given a run whose first stage sleeps
    spec = validate_data(
        pipeline(
            "edges-ids",
            {"id": "a", "uses": "sleep", "params": {"seconds": 2}},
            {"id": "b", "uses": "noop", "needs": ["a"]},
        )
    )
    run_id = cluster.client.submit(spec).run_id
    url, prefix = cluster.server.url, cluster.settings.key_prefix
    wait_until(lambda: cluster.redis.hget(f"{prefix}:run:{run_id}:states", "a") == "running")

    # When someone cancels "<run>:states" (which would make the run's states hash its "run record")
    result = chordflow(url, "cancel", f"{run_id}:states")

    # Then it is refused as invalid input, saying why, and nothing of the real run changed
    assert result.exit_code == 2, result.output
    assert f"run id '{run_id}:states' is not valid" in result.stderr and "':'" in result.stderr
    assert cluster.redis.hgetall(f"{prefix}:run:{run_id}:states") == {"a": "running", "b": "pending"}
    assert cluster.redis.hget(f"{prefix}:run:{run_id}", "status") == "running"
    assert not cluster.redis.keys(f"{prefix}:run:{run_id}:states:*")
    # the same for the other commands that take a run id (and a stage id)
    for args in (["pause", f"{run_id}:states"], ["status", f"{run_id}\n"], ["logs", run_id, "a:b"]):
        assert chordflow(url, *args).exit_code == 2, args

    # And the run goes on to succeed
    assert cluster.client.handle(run_id).wait(timeout=30).status == "succeeded"
    assert {sid: s["state"] for sid, s in status_json(url, run_id)["stages"].items()} == {
        "a": "succeeded",
        "b": "succeeded",
    }


# -- 2. health sees a Redis that refuses writes ----------------------------------------------------------


def test_health_reports_redis_memory_full_and_recovers_when_maxmemory_is_lifted(tmp_path):
    with RedisServer() as server:  # its own Redis: the shared one must keep taking writes
        fleet = Cluster(server, tmp_path)
        r = redis.Redis.from_url(server.url, decode_responses=True)
        try:
            fleet.start_worker(hostname="mem-host", concurrency=1)
            healthy = chordflow(server.url, "health")
            assert healthy.exit_code == 0, healthy.output

            # Given Redis at maxmemory with noeviction (RedisServer's policy), filled until it refuses
            assert r.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
            r.config_set("maxmemory", int(r.info("memory")["used_memory"]) + 256 * 1024)
            try:
                for i in range(10_000):
                    r.set(f"filler:{i}", "x" * 16 * 1024)
                raise AssertionError("Redis took every write: maxmemory did not apply")
            except redis.OutOfMemoryError:
                pass
            # ... and kept under it: a client's buffers freed meanwhile must not let the probe in
            r.config_set("maxmemory", int(r.info("memory")["used_memory"]) // 2)

            # When health runs: non-zero, naming Redis's memory
            full = chordflow(server.url, "health")
            assert full.exit_code == 1, full.output
            assert "UNHEALTHY: Redis memory is full and Redis refuses writes" in full.stderr
            report = json.loads(chordflow(server.url, "health", "--json").stdout)
            assert not report["healthy"] and any("maxmemory" in p for p in report["problems"])

            # Then, with maxmemory lifted, it is healthy again (and the worker is still there)
            r.config_set("maxmemory", 0)
            r.delete(*r.keys("filler:*"))
            recovered = chordflow(server.url, "health")
            assert recovered.exit_code == 0, recovered.output
            assert "mem-host/main" in json.loads(chordflow(server.url, "health", "--json").stdout)["workers"]
        finally:
            r.config_set("maxmemory", 0)
            fleet.stop()


def test_health_reports_a_read_only_redis(tmp_path):
    with RedisServer() as server:
        r = redis.Redis.from_url(server.url, decode_responses=True)
        r.execute_command("REPLICAOF", "127.0.0.1", "1")  # a replica of nothing: read-only
        try:
            result = chordflow(server.url, "health")
        finally:
            r.execute_command("REPLICAOF", "NO", "ONE")
        assert result.exit_code == 1, result.output
        assert "UNHEALTHY: Redis is read-only and refuses writes" in result.stderr


# -- 3. a fallback of null ------------------------------------------------------------------------------


def test_a_constant_fallback_of_null_ends_the_stage_with_output_null(cluster):
    # Given a stage that always fails, whose fallback is the constant null
    data = pipeline(
        "edges-null-fallback",
        {
            "id": "a",
            "uses": "fail",
            "params": {"times": -1},
            "retry": {"max_attempts": 1},
            "fallback": {"output": None},
        },
        {"id": "b", "uses": "noop", "needs": ["a"], "when": "outputs.a == null"},
    )

    # When it runs
    result = cluster.run(data, timeout=20)

    # Then the run ends, the stage ended by its fallback with output null, and status reads it
    assert result.status == "succeeded"
    status = status_json(cluster.server.url, result.run_id)
    a = status["stages"]["a"]
    assert a["state"] == "fallback" and a["output"] is None and a["error"]["type"] == "RuntimeError"
    assert status["stages"]["b"]["state"] == "succeeded"
    assert cluster.terminal_commits(result.run_id) == {"a": 1, "b": 1}
    shown = chordflow(cluster.server.url, "status", result.run_id)
    assert shown.exit_code == 0 and "fallback" in shown.stdout


def test_a_fallback_of_null_survives_the_stored_graphs_round_trip():
    graph = RunGraph.model_validate(
        {
            "name": "p",
            "version": "1",
            "nodes": [{"id": "a", "type": "fail", "queue": "cpu", "fallback": {"output": None}}],
        }
    )
    again = RunGraph.model_validate_json(graph.model_dump_json(exclude_defaults=True))
    assert again.node("a").fallback == Fallback(output=None)
    assert "output" in again.node("a").fallback.model_fields_set
    # and a {uses: TYPE} is never written back with an `output: null` that would make it two kinds
    uses = RunGraph.model_validate(
        {
            "name": "p",
            "version": "1",
            "nodes": [{"id": "a", "type": "fail", "queue": "cpu", "fallback": {"uses": "noop"}}],
        }
    )
    assert RunGraph.model_validate_json(uses.model_dump_json()).node("a").fallback.uses == "noop"


# -- 4. a stage type no worker serves -------------------------------------------------------------------


def test_a_type_no_live_worker_serves_fails_the_stage_instead_of_hanging(cluster):
    # Given a run of a type no worker serves, queued without the type check
    spec = validate_data(
        pipeline(
            "edges-unserved", {"id": "a", "uses": "nosuch.type"}, {"id": "b", "uses": "noop", "needs": ["a"]}
        )
    )
    started = time.monotonic()
    handle = cluster.client.submit(spec, check_types=False)

    # Then the run ends failed within seconds, and status shows why for stage a
    result = handle.wait(timeout=15)
    assert result.status == "failed" and time.monotonic() - started < 12
    status = status_json(cluster.server.url, handle.run_id)
    assert status["failed_stage"] == "a"
    assert cluster.terminal_commits(handle.run_id) == {"a": 1, "b": 1}
    error = status["stages"]["a"]["error"]
    assert status["stages"]["a"]["state"] == "failed"
    assert error["type"] == "UnservedStageType" and error["retryable"] is False
    assert "no live worker serves stage type 'nosuch.type' on queue 'cpu'" in error["message"]
    assert "chordflow worker --import MODULE" in error["message"]
    assert status["stages"]["b"]["state"] in ("cancelled", "upstream_failed")
    shown = chordflow(cluster.server.url, "status", handle.run_id)
    assert shown.exit_code == 1 and "UnservedStageType" in shown.stdout


def test_a_type_named_by_its_module_function_reference_is_sent_on_to_its_worker(cluster):
    # Given a type named by `module:function` (no type check, so the name was not made canonical)
    spec = validate_data(pipeline("edges-alias", {"id": "a", "uses": "tests.stages:record"}))
    # Then the message no task is registered under is sent again under the type's name, and runs
    result = cluster.client.submit(spec, check_types=False).wait(timeout=15)
    assert result.status == "succeeded", result.stage_results
    assert result.outputs["a"] == {"stage": "a", "inputs": []}


def test_a_stage_the_worker_that_took_it_lacks_goes_on_to_a_worker_that_serves_it(cluster):
    # Given the worker that serves test.record busy with three of them (all its processes); they are
    # submitted before the bare worker starts, so none of them can be bounced and finish before the
    # others start
    busy = cluster.client.submit(
        validate_data(
            pipeline(
                "edges-busy",
                *({"id": f"busy{i}", "uses": "test.record", "params": {"seconds": 12}} for i in range(3)),
            )
        )
    )
    wait_until(lambda: set(cluster.client.store.runs.states(busy.run_id).values()) == {"running"}, timeout=20)
    # and a second worker that serves only the built-in types, on every queue
    log_path = ARTIFACTS / f"worker-{os.getpid()}-bare.log"
    bare = WorkerProcess(
        cluster.server.url,
        ("cpu", "gpu", "highmem"),
        1,
        hostname="bare",
        loglevel="INFO",
        env={"PYTHONPATH": str(ROOT)},
        log_path=str(log_path),
    ).start()
    try:
        cluster.wait_workers(hostnames=["bare"])
        assert set(cluster.client.store.runs.states(busy.run_id).values()) == {"running"}, (
            "the busy stages ended early"
        )

        # When two more test.record stages are queued: only the bare worker is free to take them
        handle = cluster.client.submit(
            validate_data(
                pipeline(
                    "edges-elsewhere", {"id": "a", "uses": "test.record"}, {"id": "b", "uses": "test.record"}
                )
            )
        )

        # Then they wait for the worker that serves them, run there once each, and the run succeeds
        result = handle.wait(timeout=40)
        assert result.status == "succeeded", result.stage_results
        assert {sid: s["host"] for sid, s in result.stage_results.items()} == {"a": "w0", "b": "w0"}
        assert cluster.count(handle.run_id, "a") == cluster.count(handle.run_id, "b") == 1
        assert busy.wait(timeout=30).status == "succeeded"
        bounced = log_path.read_text(errors="replace")
        assert f"stage {handle.run_id}/" in bounced and "is not served here but by w0/main" in bounced
    finally:
        bare.stop()


# -- 5. critical: false ----------------------------------------------------------------------------------


def test_a_failed_non_critical_stage_lets_its_dependents_run_and_the_run_succeed(cluster):
    # Given a stage that fails for good with critical: false, and a stage that needs it
    data = pipeline(
        "edges-non-critical",
        {"id": "a", "uses": "fail", "params": {"times": -1}, "retry": {"max_attempts": 1}, "critical": False},
        {"id": "b", "uses": "test.record", "needs": ["a"], "when": "outputs.a == null"},
    )

    # When it runs
    result = cluster.run(data, timeout=30)

    # Then (as docs/pipeline-file.md says, see tests/unit/test_docs_semantics.py) the run succeeds,
    # b ran reading a's output as null, and status shows a failed with its error
    assert result.status == "succeeded" and result.success
    assert result.failed == ["a"]
    status = status_json(cluster.server.url, result.run_id)
    assert status["status"] == "succeeded" and status["failed_stage"] is None
    assert cluster.terminal_commits(result.run_id) == {"a": 1, "b": 1}
    a, b = status["stages"]["a"], status["stages"]["b"]
    assert a["state"] == "failed" and a["output"] is None
    assert a["error"]["type"] == "RuntimeError" and "failing on purpose" in a["error"]["message"]
    assert b["state"] == "succeeded" and b["output"] == {"stage": "b", "inputs": ["a"]}
    assert cluster.count(result.run_id, "b") == 1
    shown = chordflow(cluster.server.url, "status", result.run_id)
    assert shown.exit_code == 0 and "RuntimeError: failing on purpose" in shown.stdout
