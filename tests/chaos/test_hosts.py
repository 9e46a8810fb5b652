"""Several hosts on one machine: workers in their own network namespaces reach Redis
over veth links. A host's worker is SIGKILLed, a host is cut off, its link is slowed, Redis
restarts under everyone — and every run still finishes with each stage committed once.
"""

from __future__ import annotations

import re
import time
from collections import Counter

import pytest

from orchestration.language.validation import validate_data
from tests.integration.conftest import pipeline, wait_until

pytestmark = pytest.mark.slow

HOSTS = {"host1", "host2", "host3"}


def _submit(hosts, data: dict):
    return hosts.cluster.client.submit(validate_data(data))


def _starts(cluster, run_id: str, stage_ids: list[str]) -> dict[str, int]:
    """How many times each stage's function started (the test stages count themselves)."""
    values = cluster.redis.mget([f"test:count:{run_id}:{sid}" for sid in stage_ids])
    return {sid: int(v or 0) for sid, v in zip(stage_ids, values)}


def _started_on(cluster, run_id: str, stage_id: str, nth: int = 0, timeout: float = 30) -> str:
    """The host of the `nth` start of a `test.slow_counted` stage, once there is one."""
    return wait_until(lambda: cluster.redis.lindex(f"test:hosts:{run_id}:{stage_id}", nth), timeout=timeout)


def test_a_200_stage_pipeline_spreads_over_three_hosts(hosts):
    # Given a worker on each of three hosts
    hosts.start_workers(concurrency=1)
    cluster = hosts.cluster
    # When 20 chains of 10 short stages run
    stages = []
    for c in range(20):
        for i in range(10):
            stage = {"id": f"c{c:02d}s{i}", "uses": "test.record", "params": {"seconds": 0.03}}
            if i:
                stage["needs"] = [f"c{c:02d}s{i - 1}"]
            stages.append(stage)
    result = cluster.run(pipeline("spread", *stages), timeout=120)
    # Then the run succeeds with every stage run and committed once, on all three hosts
    assert result.status == "succeeded", result.failed
    ids = [s["id"] for s in stages]
    assert _starts(cluster, result.run_id, ids) == dict.fromkeys(ids, 1)
    assert {sid: st["attempts"] for sid, st in result.stage_results.items()} == dict.fromkeys(ids, 1)
    for stage in stages:
        assert result.outputs[stage["id"]] == {"stage": stage["id"], "inputs": stage.get("needs", [])}
    per_host = Counter(st["host"] for st in result.stage_results.values())
    assert set(per_host) == HOSTS, per_host


def test_b_sigkilled_host_reruns_its_stage_on_another_host(hosts):
    hosts.start_workers(concurrency=1)
    cluster = hosts.cluster
    handle = _submit(
        hosts,
        pipeline(
            "kill-host",
            {"id": "work", "uses": "test.slow_counted", "params": {"seconds": 3}},
            {"id": "after", "uses": "test.record", "needs": ["work"]},
        ),
    )
    # When the host running `work` loses its worker to SIGKILL mid-stage
    victim = _started_on(cluster, handle.run_id, "work")
    killed_at = time.monotonic()
    hosts.kill_worker(victim)
    # Then another host starts it again within seconds (the lease, not the broker's 1 h timeout)
    rerun_on = _started_on(cluster, handle.run_id, "work", nth=1, timeout=30)
    rerun_after_s = time.monotonic() - killed_at
    result = handle.wait(timeout=60)
    assert result.status == "succeeded"
    assert rerun_on != victim and rerun_on in HOSTS
    assert rerun_after_s < 12, f"re-run {rerun_after_s:.1f}s after the kill"
    assert result.outputs["work"] == rerun_on
    assert result.stage_results["work"]["host"] == rerun_on
    assert result.stage_results["work"]["attempts"] == 2
    assert _starts(cluster, handle.run_id, ["work", "after"]) == {"work": 2, "after": 1}  # started twice...
    assert result.metrics == {"done": 1}  # ...committed once
    assert result.outputs["after"] == {"stage": "after", "inputs": ["work"]}
    print(f"killed {victim}; re-run on {rerun_on} {rerun_after_s:.1f}s later")


def test_c_cut_off_host_late_commit_is_refused_after_its_lease_expired(hosts):
    hosts.start_workers(concurrency=1)
    cluster = hosts.cluster
    handle = _submit(
        hosts, pipeline("cut-host", {"id": "work", "uses": "test.slow_counted", "params": {"seconds": 6}})
    )
    # When the host running `work` is cut off the network mid-stage
    cut = _started_on(cluster, handle.run_id, "work")
    hosts.cut(cut)
    cut_at = time.monotonic()
    try:
        # Then its lease lapses and another host runs the stage again
        rerun_on = _started_on(cluster, handle.run_id, "work", nth=1, timeout=30)
        rerun_after_s = time.monotonic() - cut_at
        state = cluster.redis.hget(f"{cluster.settings.key_prefix}:run:{handle.run_id}:stage:work", "attempt")
        assert state == "2"
    finally:
        # And its link comes back while its own (old) attempt is still sleeping
        hosts.restore(cut)
    restored_at = time.monotonic()
    result = handle.wait(timeout=60)
    assert result.status == "succeeded"
    # The cut host wakes up, finishes its attempt, and its commit is refused by the fencing token.
    refusal = f"commit of {handle.run_id}/work item None refused (stale)"
    wait_until(lambda: refusal in hosts.log(cut), timeout=60, interval=0.2)
    print(
        f"cut {cut}; re-run on {rerun_on} {rerun_after_s:.1f}s later; late commit refused "
        f"{time.monotonic() - restored_at:.1f}s after the link came back"
    )
    final = cluster.client.status(handle.run_id)
    assert rerun_on != cut
    assert final["status"] == "succeeded"
    assert final["stages"]["work"]["output"] == rerun_on
    assert final["stages"]["work"]["host"] == rerun_on
    assert final["stages"]["work"]["attempts"] == 2
    assert final["metrics"] == {"done": 1}
    assert _starts(cluster, handle.run_id, ["work"]) == {"work": 2}


def test_d_redis_restart_mid_run_loses_nothing(hosts):
    hosts.start_workers(concurrency=1)
    cluster = hosts.cluster
    # Two layers of three slow stages (each counts a metric of its own), then a join.
    layer_a = [
        {"id": f"a{i}", "uses": "test.slow_counted", "params": {"seconds": 2, "metric": f"a{i}"}}
        for i in range(3)
    ]
    layer_b = [
        {
            "id": f"b{i}",
            "uses": "test.slow_counted",
            "needs": ["a0", "a1", "a2"],
            "params": {"seconds": 2, "metric": f"b{i}"},
        }
        for i in range(3)
    ]
    join = {"id": "join", "uses": "test.record", "needs": ["b0", "b1", "b2"]}
    handle = _submit(hosts, pipeline("restart", *layer_a, *layer_b, join))
    slow = [s["id"] for s in layer_a + layer_b]
    downtimes = []
    # When Redis restarts while each layer is running
    for layer in ("a", "b"):
        for i in range(3):
            _started_on(cluster, handle.run_id, f"{layer}{i}", timeout=60)
        downtimes.append(hosts.restart_redis())
    result = handle.wait(timeout=120)
    # Then the run finishes, every stage committed once and no output lost
    assert result.status == "succeeded", (result.failed, result.stage_results)
    assert result.metrics == dict.fromkeys(slow, 1)
    assert set(result.outputs) == {*slow, "join"}
    assert all(result.outputs[sid] in HOSTS for sid in slow)
    assert result.outputs["join"] == {"stage": "join", "inputs": ["b0", "b1", "b2"]}
    starts = _starts(cluster, handle.run_id, [*slow, "join"])
    # A stage whose attempt the restart interrupted may start again; none is lost or committed twice.
    assert all(1 <= n <= 3 for n in starts.values()), starts
    print(
        f"redis down {[round(d, 2) for d in downtimes]}s; starts {starts}; "
        f"attempts { {sid: st['attempts'] for sid, st in result.stage_results.items()} }"
    )


def test_e_throttled_host_still_finishes_the_run(hosts):
    hosts.start_workers(concurrency=1)
    cluster = hosts.cluster
    # Six chains of five short stages, and three stages with 200 kB outputs (1.6 s each at 1 Mbit/s).
    stages = []
    for c in range(6):
        for i in range(5):
            stage = {"id": f"c{c}s{i}", "uses": "test.record", "params": {"seconds": 0.2}}
            if i:
                stage["needs"] = [f"c{c}s{i - 1}"]
            stages.append(stage)
    big = [
        {"id": f"big{c}", "uses": "test.big_output", "needs": [f"c{c}s1"], "params": {"size": 200_000}}
        for c in range(3)
    ]
    handle = _submit(hosts, pipeline("throttle", *stages, *big))
    # When host2's link is limited to 1 Mbit/s with a token bucket, mid-run
    states = f"{cluster.settings.key_prefix}:run:{handle.run_id}:states"
    wait_until(lambda: list(cluster.redis.hvals(states)).count("succeeded") >= 4, timeout=30)
    hosts.throttle("host2")
    throttled_at = time.time()
    result = handle.wait(timeout=120)
    # Then the run finishes correctly, the slow host included
    assert result.status == "succeeded", result.failed
    ids = [s["id"] for s in stages]
    assert _starts(cluster, handle.run_id, ids) == dict.fromkeys(ids, 1)
    assert all(st["attempts"] == 1 for st in result.stage_results.values())
    assert all(result.outputs[b["id"]] == "x" * 200_000 for b in big)
    after = [
        sid
        for sid, st in result.stage_results.items()
        if st["host"] == "host2" and (st["started_at"] or 0) > throttled_at
    ]
    assert after, "the throttled host ran nothing after it was throttled"
    took = {
        sid: round(st["finished_at"] - st["started_at"], 2)
        for sid, st in result.stage_results.items()
        if sid.startswith("big")
    }
    print(
        f"host2 ran {len(after)} stages after the throttle; big outputs took {took}s "
        f"on { {sid: result.stage_results[sid]['host'] for sid in took} }"
    )


# -- a Redis restart does not restart running stages; a cut-off host stops its own stage --


def test_d2_stages_running_through_a_redis_restart_are_not_started_again(hosts):
    hosts.start_workers(concurrency=1)
    cluster = hosts.cluster
    slow = [
        {"id": f"s{i}", "uses": "test.slow_counted", "params": {"seconds": 3, "metric": f"s{i}"}}
        for i in range(3)
    ]
    handle = _submit(hosts, pipeline("restart-once", *slow))
    for stage in slow:
        _started_on(cluster, handle.run_id, stage["id"], timeout=60)
    hosts.restart_redis()
    result = handle.wait(timeout=60)
    ids = [s["id"] for s in slow]
    assert result.status == "succeeded"
    assert result.metrics == dict.fromkeys(ids, 1)
    assert _starts(cluster, handle.run_id, ids) == dict.fromkeys(ids, 1)
    assert {sid: st["attempts"] for sid, st in result.stage_results.items()} == dict.fromkeys(ids, 1)


def test_c2_cut_off_host_stops_its_stage_once_it_cannot_renew_its_lease(hosts):
    hosts.start_workers(concurrency=1)
    cluster = hosts.cluster
    handle = _submit(
        hosts, pipeline("cut-stop", {"id": "work", "uses": "test.slow_counted", "params": {"seconds": 10}})
    )
    cut = _started_on(cluster, handle.run_id, "work")
    hosts.cut(cut)
    try:
        _started_on(cluster, handle.run_id, "work", nth=1, timeout=30)
        time.sleep(6)  # the lease (3 s) is long gone: the cut host should have given the stage up
        log = hosts.log(cut)
    finally:
        hosts.restore(cut)
    result = handle.wait(timeout=60)
    assert result.status == "succeeded"
    assert result.metrics == {"done": 1}
    gave_up = re.search(rf"(could not renew the lease of|lease lost for) {handle.run_id}/work", log)
    assert gave_up, "while cut off, the host neither failed to renew nor stopped the stage"
