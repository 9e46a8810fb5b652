"""A Redis primary, its replicas and three Sentinels as real processes on loopback, for tests.

    with SentinelCluster(replicas=2) as cluster:     # AOF on, down-after 1000 ms
        cluster.url                                  # 'redis+sentinel://127.0.0.1:p1,...:p3/mymaster/0'
        cluster.primary_address()                    # ('127.0.0.1', port), as the Sentinels see it
        node = cluster.kill_primary()                # SIGKILL; returns the killed node
        switch = cluster.wait_switch_master()        # SwitchMaster(at, old, new), `at` from time.time()
        node.start()                                 # the old primary comes back (as a replica)

Used by tests/integration/test_sentinel.py and the failover harness (tests/ha/). Every node
keeps its directory (AOF, sentinel config) across kill and start, so a restart recovers its
data. The Sentinels' `+switch-master` announcements are recorded from the start, each with the
wall-clock time it was received, so a test can compare them with commit times in Redis.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Self
from urllib.parse import quote

import redis

from orchestration.fleet.embedded import free_port, redis_server_binary

HOST = "127.0.0.1"


@dataclass(frozen=True)
class SwitchMaster:
    """One `+switch-master` announcement: when it was received (time.time()) and the move."""

    at: float
    old: tuple[str, int]
    new: tuple[str, int]


class PortTaken(RuntimeError):
    """A server could not start on its port (another process took it first)."""


class Node:
    """One redis-server process (a data node or a Sentinel) on a fixed port and directory."""

    def __init__(self, args: list[str], port: int, directory: Path, password: str | None = None):
        self.args, self.port, self.dir, self.password = args, port, directory, password
        self.proc: subprocess.Popen | None = None

    @property
    def address(self) -> tuple[str, int]:
        return (HOST, self.port)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc and self.proc.poll() is None else None

    def client(self, **kwargs) -> redis.Redis:
        return redis.Redis(HOST, self.port, password=self.password, decode_responses=True, **kwargs)

    def start(self, timeout_s: float = 10.0) -> Self:
        log = open(self.dir / "server.log", "ab")  # noqa: SIM115 - the child holds it for its life
        self.proc = subprocess.Popen(self.args, cwd=self.dir, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        _before_the_workers(self.proc.pid)
        client = self.client(socket_timeout=1)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                # the server answering must be this process: other tests start servers on free
                # ports too, and one may have taken this port between free_port() and now
                if int(client.info("server")["process_id"]) == self.proc.pid:
                    return self
            except redis.RedisError:
                pass
            if self.proc.poll() is not None:
                raise PortTaken(
                    f"redis-server on port {self.port} exited at start: see {self.dir}/server.log"
                )
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"redis-server on port {self.port} did not start: see {self.dir}")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final AOF fsync."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def pause(self) -> None:
        """SIGSTOP (the process holds its connections but answers nothing)."""
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.resume()
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


def _memory_dir() -> str | None:
    """A tmpfs for the cluster's files when the machine has one (/dev/shm): a Sentinel rewrites and
    fsyncs its config file at every switch, with its event loop stopped meanwhile; on a disk shared
    with a test run that can outlast down-after (1000 ms), and the other Sentinels' stale votes for
    the last failover then turn it into a failover of the healthy new primary (seen once in the
    failover harness: a second switch 1 s after the first, and a split brain for 10 s). The AOF
    is still written and read back by a restart; only the host's own crash is not simulated."""
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None


class SentinelCluster:
    """A primary, `replicas` replicas and `sentinels` Sentinels (quorum: a majority of them)."""

    def __init__(
        self,
        replicas: int = 2,
        sentinels: int = 3,
        master_name: str = "mymaster",
        password: str | None = None,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 4000,
        appendonly: bool = True,
        db: int = 0,
    ):
        self.master_name, self.password, self.db = master_name, password, db
        self.root = Path(tempfile.mkdtemp(prefix="chordflow-sentinel-", dir=_memory_dir()))
        self.switches: list[SwitchMaster] = []
        self._stop = threading.Event()
        self._watchers: list[threading.Thread] = []
        self._shape = (replicas, sentinels, down_after_ms, failover_timeout_ms, appendonly)
        self._build()

    def _build(self) -> None:
        """Every process's port, directory and arguments (again, with new ports, after PortTaken)."""
        replicas, sentinels, down_after_ms, failover_timeout_ms, appendonly = self._shape
        for old in self.root.iterdir():
            shutil.rmtree(old, ignore_errors=True)
        primary_port = free_port()
        self.nodes = [
            self._data_node(i, primary_port if i == 0 else free_port(), primary_port, appendonly)
            for i in range(replicas + 1)
        ]
        quorum = sentinels // 2 + 1
        self.sentinels = [
            self._sentinel(i, free_port(), primary_port, quorum, down_after_ms, failover_timeout_ms)
            for i in range(sentinels)
        ]

    # -- building the processes ------------------------------------------------------------------
    def _data_node(self, index: int, port: int, primary_port: int, appendonly: bool) -> Node:
        directory = self.root / f"redis-{index}"
        directory.mkdir()
        args = [redis_server_binary(), "--port", str(port), "--bind", HOST, "--dir", str(directory)]
        args += ["--save", "", "--appendonly", "yes" if appendonly else "no", "--appendfsync", "everysec"]
        args += ["--protected-mode", "no", "--maxmemory-policy", "noeviction"]
        args += ["--repl-diskless-sync-delay", "0"]  # a replica's full sync starts at once, not in 5 s
        if self.password:
            args += ["--requirepass", self.password, "--masterauth", self.password]
        if index:
            args += ["--replicaof", HOST, str(primary_port)]
        return Node(args, port, directory, self.password)

    def _sentinel(
        self, index: int, port: int, primary_port: int, quorum: int, down_ms: int, failover_ms: int
    ) -> Node:
        directory = self.root / f"sentinel-{index}"
        directory.mkdir()
        conf = directory / "sentinel.conf"  # Sentinel rewrites its config file: one per Sentinel
        lines = [
            f"port {port}",
            f"bind {HOST}",
            "protected-mode no",
            f"dir {directory}",
            f"sentinel monitor {self.master_name} {HOST} {primary_port} {quorum}",
            f"sentinel down-after-milliseconds {self.master_name} {down_ms}",
            f"sentinel failover-timeout {self.master_name} {failover_ms}",
            f"sentinel parallel-syncs {self.master_name} 1",
        ]
        if self.password:
            lines.append(f"sentinel auth-pass {self.master_name} {self.password}")
        conf.write_text("\n".join(lines) + "\n")
        return Node([redis_server_binary(), str(conf), "--sentinel"], port, directory)

    # -- life ----------------------------------------------------------------------------------
    def start(self, attempts: int = 3) -> Self:
        for attempt in range(attempts):
            try:
                for node in self.nodes:
                    node.start()
                for sentinel in self.sentinels:
                    sentinel.start()
                break
            except PortTaken:
                self._stop_processes()
                if attempt == attempts - 1:
                    self.stop()
                    raise
                self._build()  # new free ports, and try again
            except BaseException:
                self.stop()
                raise
        try:
            self._wait_ready()
            for sentinel in self.sentinels:
                thread = threading.Thread(target=self._watch, args=(sentinel,), daemon=True)
                thread.start()
                self._watchers.append(thread)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout_s: float = 30.0) -> None:
        """Until every replica is in sync and every Sentinel knows the replicas and its peers."""
        deadline = time.monotonic() + timeout_s
        want_replicas, want_peers = len(self.nodes) - 1, len(self.sentinels) - 1
        while time.monotonic() < deadline:
            try:
                info = self.nodes[0].client().info("replication")
                online = sum(
                    1
                    for k, v in info.items()
                    if k.startswith("slave") and isinstance(v, dict) and v.get("state") == "online"
                )
                states = [s.client().sentinel_master(self.master_name) for s in self.sentinels]
                if online >= want_replicas and all(
                    int(m["num-slaves"]) >= want_replicas and int(m["num-other-sentinels"]) >= want_peers
                    for m in states
                ):
                    return
            except redis.RedisError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"the Sentinel cluster in {self.root} did not settle within {timeout_s}s")

    def _watch(self, sentinel: Node) -> None:
        """Record every `+switch-master` this Sentinel announces (the first per move is kept)."""
        while not self._stop.is_set():
            try:
                pubsub = sentinel.client(socket_timeout=1).pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe("+switch-master")
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=0.2)
                    if message:
                        self._record(str(message["data"]), time.time())
            except redis.RedisError:
                time.sleep(0.2)  # this Sentinel is down or restarting

    def _record(self, data: str, at: float) -> None:
        # "<master name> <old ip> <old port> <new ip> <new port>"
        name, old_ip, old_port, new_ip, new_port = data.split()
        if name != self.master_name:
            return
        switch = SwitchMaster(at, (old_ip, int(old_port)), (new_ip, int(new_port)))
        with _LOCK:
            if not any(
                s.old == switch.old and s.new == switch.new and abs(s.at - at) < 5 for s in self.switches
            ):
                self.switches.append(switch)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._watchers:
            thread.join(timeout=2)
        self._stop_processes()
        shutil.rmtree(self.root, ignore_errors=True)

    def _stop_processes(self) -> None:
        for node in [*self.sentinels, *self.nodes]:
            node.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what a test asks ----------------------------------------------------------------------
    @property
    def url(self) -> str:
        """The `redis+sentinel://` URL of this cluster, for CHORDFLOW_REDIS_URL."""
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        hosts = ",".join(f"{HOST}:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{auth}{hosts}/{self.master_name}/{self.db}"

    def primary_address(self) -> tuple[str, int]:
        """The primary as the first Sentinel that answers sees it."""
        for sentinel in self.sentinels:
            try:
                host, port = sentinel.client(socket_timeout=1).sentinel_get_master_addr_by_name(
                    self.master_name
                )
                return (host, int(port))
            except (redis.RedisError, TypeError):
                continue
        raise RuntimeError("no Sentinel answers")

    def node_at(self, address: tuple[str, int]) -> Node:
        return next(n for n in self.nodes if n.address == tuple(address))

    @property
    def primary(self) -> Node:
        return self.node_at(self.primary_address())

    @property
    def replicas(self) -> list[Node]:
        primary = self.primary_address()
        return [n for n in self.nodes if n.address != primary]

    def primary_client(self) -> redis.Redis:
        """A plain client of the current primary (for a test's own reads; not failover-aware)."""
        return self.primary.client()

    def kill_primary(self) -> Node:
        """SIGKILL the current primary; returns its node (call `.start()` to bring it back)."""
        node = self.primary
        node.kill()
        return node

    def wait_replica(self, node: Node, timeout_s: float = 30.0) -> None:
        """Until `node` (e.g. a restarted old primary) serves as a replica that has synced: the
        Sentinels turn it into one a few seconds after it comes back, and its first sync follows
        (until then it holds only what its own AOF had)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                info = node.client(socket_timeout=1).info("replication")
                synced = info.get("master_link_status") == "up" and not int(
                    info.get("master_sync_in_progress", 1)
                )
                if info.get("role") == "slave" and synced:
                    return
            except redis.RedisError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"redis-server on port {node.port} did not become a replica in {timeout_s}s")

    def wait_switch_master(self, after: float | None = None, timeout_s: float = 30.0) -> SwitchMaster:
        """The first `+switch-master` received at or after `after` (time.time(); default: any)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with _LOCK:
                found = [s for s in self.switches if after is None or s.at >= after]
            if found:
                return found[0]
            time.sleep(0.05)
        raise AssertionError(f"no +switch-master within {timeout_s}s")


_LOCK = threading.Lock()


def _before_the_workers(pid: int) -> None:
    """Run the cluster's processes ahead of everything else on this machine (nice -10, as root).

    In production the Sentinels and the data nodes have hosts of their own; here they share two
    cores with the workers and the test. Starved of CPU for a second, two Sentinels miss a PING
    reply and fail over a healthy primary (down-after is 1000 ms): a failover no nemesis made,
    which promotes whatever replica there is, even one still in its first sync. The seeds test
    the failovers they plan."""
    try:
        os.setpriority(os.PRIO_PROCESS, pid, -10)
    except (PermissionError, ProcessLookupError):
        pass  # not root: the default priority
