"""Faults a failover test injects, 1-3 per seed, chosen by a seeded RNG (the same seed, the same plan).

- `kill_primary`: SIGKILL the primary; done when the Sentinels announce `+switch-master`.
- `lagging_kill`: SIGSTOP the replicas, `CLIENT KILL TYPE replica` on the primary, let it take
  writes alone for 300 ms, SIGKILL it, SIGCONT the replicas: the promoted replica lacks those
  writes, which only WAIT (CHORDFLOW_REPLICAS_ACK) keeps from having been acknowledged.
- `kill_worker`: SIGKILL a worker (its whole process group), then start a new one.
- `restart_primary`: start the last primary killed again (AOF); done once the Sentinels have made it
  a replica and its first sync is over.

A plan never kills a primary while an earlier one is still down, so a replica is always left to
acknowledge a WAIT 1 (and a failover always has a replica to promote).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tests.sentinel_cluster import Node, SentinelCluster

PRIMARY_KILLS = ("kill_primary", "lagging_kill")
LAG_S = 0.3
#: A fault strikes this long after the wave submitted just before it: well inside a wave (a wave of
#: the five pipelines takes 2-3 s on two workers), so it meets commits in flight however fast the
#: engine has become. Measured from the end of a wave's run, it missed: at 1.5-3.5 s after the
#: second of two waves, a CI run's lagging kill met the tail of the work (4 commits in its 300 ms).
STRIKE_AFTER_WAVE_S = (0.3, 1.2)


@dataclass(frozen=True)
class Step:
    kind: str
    wait_s: float  # after the wave submitted before it


@dataclass
class Fired:
    """What a step did, for the report and for asserting that it really happened."""

    kind: str
    at: float  # time.time() when it struck
    done_at: float = 0.0
    detail: str = ""


def plan(seed: int, kinds: tuple[str, ...] | None = None) -> list[Step]:
    """1-3 steps for `seed` (or exactly `kinds`, for the control variant)."""
    rng = random.Random(f"chordflow-ha:{seed}")  # a str seed hashes the same in every process
    if kinds is None:
        chosen: list[str] = []
        primary_down = False
        for _ in range(rng.randint(1, 3)):
            allowed = ["restart_primary", "kill_worker"] if primary_down else [*PRIMARY_KILLS, "kill_worker"]
            kind = rng.choice(allowed)
            primary_down = kind in PRIMARY_KILLS or (primary_down and kind != "restart_primary")
            chosen.append(kind)
        kinds = tuple(chosen)
    return [Step(kind, rng.uniform(*STRIKE_AFTER_WAVE_S)) for kind in kinds]


@dataclass
class Nemesis:
    """Runs a plan against a cluster and its workers (`kill_worker_fn` kills one and starts another)."""

    cluster: SentinelCluster
    kill_worker_fn: Callable[[int], str]  # kills worker #n (a seeded choice), returns what it killed
    worker_count: Callable[[], int]
    rng: random.Random
    fired: list[Fired] = field(default_factory=list)
    down: list[Node] = field(default_factory=list)
    error: str = ""  # why the plan stopped short (a failover that never came), for the report
    between: Callable[[], None] | None = None  # before each fault: a wave of work for it to hit

    def run(self, steps: list[Step]) -> None:
        try:
            for step in steps:
                if self.between is not None:
                    self.between()
                time.sleep(step.wait_s)
                getattr(self, step.kind)()
        except Exception as exc:  # noqa: BLE001  reported with the seed, not lost in a thread
            self.error = f"{type(exc).__name__}: {exc}"

    def _primary_gone(self, fired: Fired, old: tuple[str, int]) -> None:
        switch = self.cluster.wait_switch_master(after=fired.at, timeout_s=60)
        fired.done_at = switch.at
        fired.detail += f"; +switch-master {old[1]} -> {switch.new[1]} after {switch.at - fired.at:.1f} s"

    def kill_primary(self) -> None:
        node = self.cluster.primary
        fired = Fired("kill_primary", time.time(), detail=f"SIGKILL primary :{node.port} pid {node.pid}")
        node.kill()
        self.fired.append(fired)
        self.down.append(node)
        self._primary_gone(fired, node.address)

    def lagging_kill(self) -> None:
        node = self.cluster.primary
        replicas = [n for n in self.cluster.replicas if n.pid is not None]
        for replica in replicas:
            replica.pause()
        fired = Fired("lagging_kill", time.time())
        try:
            killed = node.client(socket_timeout=2).client_kill_filter(_type="replica")
            before = self._offset(node)
            time.sleep(LAG_S)
            after = self._offset(node)
            fired.detail = (
                f"replicas {[r.port for r in replicas]} stopped and cut ({killed} links), primary :{node.port} "
                f"took {after - before} bytes of writes alone for {LAG_S * 1000:.0f} ms, then SIGKILL"
            )
            node.kill()
        finally:
            for replica in replicas:
                replica.resume()
        self.fired.append(fired)
        self.down.append(node)
        self._primary_gone(fired, node.address)

    @staticmethod
    def _offset(node: Node) -> int:
        return int(node.client(socket_timeout=2).info("replication").get("master_repl_offset", 0))

    def kill_worker(self) -> None:
        fired = Fired("kill_worker", time.time())
        fired.detail = self.kill_worker_fn(self.rng.randrange(self.worker_count()))
        fired.done_at = time.time()
        self.fired.append(fired)

    def restart_primary(self) -> None:
        node = self.down.pop()
        fired = Fired("restart_primary", time.time(), detail=f"restart :{node.port}")
        node.start()
        self.cluster.wait_replica(node, timeout_s=60)
        fired.done_at = time.time()
        fired.detail += f", a synced replica after {fired.done_at - fired.at:.1f} s"
        self.fired.append(fired)
