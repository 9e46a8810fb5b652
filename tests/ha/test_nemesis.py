"""The nemeses do what they say, on a real Sentinel cluster: the lagging kill loses writes the old
primary acknowledged (unless WAIT said they were not on a replica), the restarted primary rejoins
as a replica, and a seed's plan is the same every time."""

from __future__ import annotations

import random
import threading
import time

import pytest
import redis

from tests.sentinel_cluster import SentinelCluster

from . import nemesis

pytestmark = pytest.mark.ha


def test_a_seed_always_makes_the_same_plan_of_one_to_three_faults():
    plans = {seed: nemesis.plan(seed) for seed in range(1, 11)}
    assert plans == {seed: nemesis.plan(seed) for seed in range(1, 11)}
    assert all(1 <= len(p) <= 3 for p in plans.values())
    for steps in plans.values():
        down = False
        for step in steps:
            assert not (down and step.kind in nemesis.PRIMARY_KILLS), steps  # one primary down at a time
            down = step.kind in nemesis.PRIMARY_KILLS or (down and step.kind != "restart_primary")
    kinds = {step.kind for steps in plans.values() for step in steps}
    assert kinds == {"kill_primary", "lagging_kill", "kill_worker", "restart_primary"}


def _writer(cluster: SentinelCluster, stop: threading.Event, acked: list[int], waited: list[int]) -> None:
    """INCR on the primary as fast as it answers; remember each value it acknowledged, and the ones
    a WAIT 1 (50 ms) confirmed were on a replica."""
    while not stop.is_set():
        try:
            r = cluster.primary.client(socket_timeout=0.5)
            while not stop.is_set():
                value = r.incr("n")
                acked.append(value)
                if r.wait(1, 50) >= 1:
                    waited.append(value)
        except (redis.RedisError, RuntimeError, StopIteration):
            time.sleep(0.05)


def test_the_lagging_kill_loses_acknowledged_writes_that_wait_did_not_confirm():
    with SentinelCluster(replicas=2, master_name="ha") as cluster:
        old = cluster.primary
        stop, acked, waited = threading.Event(), [], []
        writer = threading.Thread(target=_writer, args=(cluster, stop, acked, waited), daemon=True)
        writer.start()
        time.sleep(0.5)
        nem = nemesis.Nemesis(cluster, lambda n: "", lambda: 0, random.Random(1))
        nem.lagging_kill()
        stop.set()
        writer.join(timeout=10)
        [fired] = nem.fired
        assert fired.kind == "lagging_kill" and fired.done_at > fired.at
        assert cluster.primary.port != old.port
        survived = int(cluster.primary_client().get("n") or 0)
        # the old primary acknowledged writes the new one does not have...
        assert max(acked) > survived, (max(acked), survived)
        # ...and every write WAIT confirmed on a replica survived
        assert max(waited) <= survived
        # the old primary comes back as a replica of the new one, and loses what it had alone
        nem.restart_primary()
        info = old.client().info("replication")
        assert info["role"] == "slave" and info["master_link_status"] == "up"
        assert "a synced replica after" in nem.fired[-1].detail
