"""Several "hosts" on one machine: a network namespace per host, joined to Redis by a veth link.

    root namespace                      namespace cf<pid>h1 ("host1")
    ┌──────────────────────────┐        ┌──────────────────────────────┐
    │ redis-server  10.213.X.1 │        │ lo up                        │
    │     bridge cf<pid>br ────┼─ veth ─┤ eth0 10.213.X.11             │
    │       ├ cf<pid>v1        │        │ python -m workers            │
    │       ├ cf<pid>v2 ...    │        │   --hostname host1           │
    └──────────────────────────┘        └──────────────────────────────┘

Every worker reaches Redis only through its own link, so a test can take one
host off the network (`cut`), slow its link (`throttle`), SIGKILL its worker
(`kill_worker`) or restart Redis under every host at once (`restart_redis`).

Names carry the test session's pid (`cf<pid>...`) and the subnet is one no
other interface uses, so parallel sessions do not collide. Everything made is
removed by `HostNetwork.destroy()`, which the `hosts` fixture calls in a
`finally`; leftovers of a session that died (its pid is gone) are removed at
the start. Needs root and `ip`/`tc` (iproute2); where namespaces cannot be
made, `HostNetwork.create()` skips the test and says why.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from orchestration.fleet.embedded import RedisServer, WorkerProcess
from tests.integration.conftest import ARTIFACTS, ROOT, Cluster

# Leases of 3 s renewed every 0.5 s: a lost host is noticed within seconds.
FAST_LEASES = {"CHORDFLOW_LEASE_S": "3", "CHORDFLOW_HEARTBEAT_S": "0.5", "CHORDFLOW_MAX_DELIVERIES": "3"}
SUBNET_BASE = "10.213"
_LEFTOVER = re.compile(r"^cf(\d+)(br|h\d+|v\d+)$")


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run `ip ARGS...`; raise with its stderr if it fails and `check`."""
    return _run(["ip", *args], check)


def tc(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return _run(["tc", *args], check)


def _run(argv: list[str], check: bool) -> subprocess.CompletedProcess:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except FileNotFoundError:
        if check:
            raise
        return subprocess.CompletedProcess(argv, 127, "", f"{argv[0]}: not found")
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class Host:
    """One namespace: its name, its link (root side), its address and its worker."""

    name: str  # the worker's --hostname, recorded on every stage it runs ("host1")
    netns: str  # cf<pid>h1
    veth: str  # root side of the link, a port of the bridge (cf<pid>v1); the other end is eth0
    addr: str  # the host's address on the bridge's subnet
    worker: WorkerProcess | None = None
    log_path: Path | None = None
    throttled: bool = False


@dataclass
class HostNetwork:
    """A bridge with Redis on it, and `count` hosts in their own namespaces.

    `cluster` is the integration tests' Cluster (client, redis, run, count,
    wait_workers) pointed at the Redis on the bridge; `start_worker(host)`
    starts a worker inside that host's namespace.
    """

    count: int = 3
    appendonly: bool = True
    tag: str = "hosts"  # names the worker logs in tests/artifacts/
    worker_env: dict[str, str] = field(default_factory=lambda: dict(FAST_LEASES))
    prefix: str = field(default_factory=lambda: f"cf{os.getpid()}")
    hosts: dict[str, Host] = field(default_factory=dict)
    server: RedisServer | None = None
    cluster: Cluster | None = None
    bridge: str = ""
    gateway: str = ""

    # -- building and tearing down --------------------------------------------------------------
    def create(self, tmp: Path) -> HostNetwork:
        """Make the bridge, the namespaces and Redis; skip the test if namespaces are refused."""
        if os.geteuid() != 0:
            pytest.skip("network namespaces unavailable: the host tests need root")
        self.bridge = f"{self.prefix}br"
        probe = f"{self.prefix}h0"
        try:
            remove_leftovers(self.prefix)
            ip("netns", "add", probe)
        except (RuntimeError, OSError) as exc:  # OSError: no `ip` at all
            pytest.skip(f"network namespaces unavailable: {exc}")
        ip("netns", "del", probe, check=False)

        octet = _free_octet(os.getpid())
        self.gateway = f"{SUBNET_BASE}.{octet}.1"
        ip("link", "add", self.bridge, "type", "bridge")
        ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")
        for i in range(1, self.count + 1):
            host = Host(
                name=f"host{i}",
                netns=f"{self.prefix}h{i}",
                veth=f"{self.prefix}v{i}",
                addr=f"{SUBNET_BASE}.{octet}.{10 + i}",
            )
            self.hosts[host.name] = host  # before it exists: a half-made host is removed too
            ip("netns", "add", host.netns)
            ip("link", "add", host.veth, "type", "veth", "peer", "name", "eth0", "netns", host.netns)
            ip("link", "set", host.veth, "master", self.bridge)
            ip("link", "set", host.veth, "up")
            ip("-n", host.netns, "link", "set", "lo", "up")
            ip("-n", host.netns, "addr", "add", f"{host.addr}/24", "dev", "eth0")
            ip("-n", host.netns, "link", "set", "eth0", "up")

        # AOF on, so a restart of Redis keeps the queues and the runs.
        self.server = RedisServer(bind=self.gateway, appendonly=self.appendonly).start()
        self.cluster = Cluster(self.server, tmp)
        for host in self.hosts.values():
            self.wait_reachable(host)
        return self

    def destroy(self) -> None:
        """Stop every worker and Redis, remove every namespace and link. Safe to call twice."""
        running = [
            h.worker.proc
            for h in self.hosts.values()
            if h.worker is not None and h.worker.proc is not None and h.worker.proc.poll() is None
        ]
        for proc in running:  # all at once: a warm shutdown takes a second or two each
            _signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in running:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait()
        for host in self.hosts.values():
            _kill_namespace_processes(host.netns)
        if self.server is not None:
            self.server.stop()
        if self.cluster is not None:
            self.cluster.redis.close()
        for host in self.hosts.values():
            ip("link", "del", host.veth, check=False)
            ip("netns", "del", host.netns, check=False)
        if self.bridge:
            ip("link", "del", self.bridge, check=False)

    # -- workers --------------------------------------------------------------------------------
    def start_worker(
        self, name: str, concurrency: int = 1, env: dict[str, str] | None = None, wait: bool = True
    ) -> WorkerProcess:
        """Start `python -m workers --hostname NAME` inside the host's namespace."""
        assert self.server is not None and self.cluster is not None
        host = self.hosts[name]
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        host.log_path = ARTIFACTS / f"worker-{os.getpid()}-{self.tag}-{name}.log"
        host.worker = WorkerProcess(
            self.server.url,
            concurrency=concurrency,
            hostname=name,
            imports=["tests.stages"],
            env={"PYTHONPATH": str(ROOT), "CHORDFLOW_TEST_HOST": name, **self.worker_env, **(env or {})},
            log_path=str(host.log_path),
            loglevel="INFO",
            prefix=["ip", "netns", "exec", host.netns],
        ).start()
        if wait:
            self.cluster.wait_workers(hostnames=[name])
        return host.worker

    def start_workers(self, concurrency: int = 1, env: dict[str, str] | None = None) -> None:
        """A worker on every host, started together (their imports overlap), then waited for."""
        assert self.cluster is not None
        for name in self.hosts:
            self.start_worker(name, concurrency, env, wait=False)
        self.cluster.wait_workers(hostnames=list(self.hosts))

    def kill_worker(self, name: str) -> None:
        """SIGKILL the host's worker: its main process and its pool, the whole process group."""
        worker = self.hosts[name].worker
        assert worker is not None and worker.proc is not None
        os.killpg(worker.proc.pid, signal.SIGKILL)
        worker.proc.wait()

    def log(self, name: str) -> str:
        path = self.hosts[name].log_path
        return path.read_text(errors="replace") if path and path.exists() else ""

    # -- the network ----------------------------------------------------------------------------
    def cut(self, name: str) -> None:
        """Take the host off the network: its link goes down, packets both ways are dropped.

        Connections stay open, as when a cable or a switch port fails: nothing tells
        the worker, its reads and writes time out.
        """
        ip("link", "set", self.hosts[name].veth, "down")

    def restore(self, name: str, wait: bool = True) -> None:
        """Bring the host's link back (and, by default, wait until Redis answers from inside)."""
        ip("link", "set", self.hosts[name].veth, "up")
        if wait:
            self.wait_reachable(self.hosts[name])

    def throttle(self, name: str, rate: str = "1mbit", burst: str = "32kbit", latency: str = "400ms") -> None:
        """A token-bucket limit on the host's link, both ways (egress of each end of the veth)."""
        host = self.hosts[name]
        shape = ["root", "tbf", "rate", rate, "burst", burst, "latency", latency]
        tc("qdisc", "add", "dev", host.veth, *shape)
        tc("-n", host.netns, "qdisc", "add", "dev", "eth0", *shape)
        host.throttled = True

    def unthrottle(self, name: str) -> None:
        host = self.hosts[name]
        tc("qdisc", "del", "dev", host.veth, "root", check=False)
        tc("-n", host.netns, "qdisc", "del", "dev", "eth0", "root", check=False)
        host.throttled = False

    def wait_reachable(self, host: Host, timeout_s: float = 10.0) -> None:
        """Block until a TCP connection from inside the host's namespace reaches Redis."""
        assert self.server is not None
        probe = (
            "import socket,sys,time\n"
            "end=time.monotonic()+float(sys.argv[3])\n"
            "while True:\n"
            "  try: socket.create_connection((sys.argv[1],int(sys.argv[2])),timeout=1).close(); break\n"
            "  except OSError:\n"
            "    if time.monotonic()>end: sys.exit(1)\n"
            "    time.sleep(0.05)\n"
        )
        done = subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                host.netns,
                sys.executable,
                "-c",
                probe,
                self.gateway,
                str(self.server.port),
                str(timeout_s),
            ],
            capture_output=True,
            timeout=timeout_s + 10,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"{host.name} cannot reach Redis at {self.gateway}:{self.server.port}: "
                f"{done.stderr.decode(errors='replace')[-500:]}"
            )

    # -- Redis ----------------------------------------------------------------------------------
    def restart_redis(self, down_s: float = 0.0) -> float:
        """Stop Redis with SIGTERM (it flushes its AOF) and start it again: same port, same dir.

        Returns how long Redis was unreachable, in seconds.
        """
        server = self.server
        assert server is not None and server.proc is not None
        started = time.monotonic()
        server.proc.terminate()
        server.proc.wait(timeout=30)
        if down_s:
            time.sleep(down_s)
        server.start(timeout_s=30)
        return time.monotonic() - started


def _free_octet(seed: int) -> int:
    """A third octet for SUBNET_BASE.X.0/24 that no interface of the root namespace uses."""
    used = set(re.findall(rf"inet {re.escape(SUBNET_BASE)}\.(\d+)\.", ip("-4", "addr", "show").stdout))
    for step in range(250):
        octet = 1 + (seed + step) % 250
        if str(octet) not in used:
            return octet
    raise RuntimeError(f"no free /24 left in {SUBNET_BASE}.0.0/16")


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _kill_namespace_processes(netns: str) -> None:
    """SIGKILL what still runs in a namespace this harness made (orphaned pool processes)."""
    pids = ip("netns", "pids", netns, check=False).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


def remove_leftovers(prefix: str) -> None:
    """Remove namespaces and links of this session's prefix, and of sessions whose process is gone.

    A dead session's namespace that still holds processes is left alone: they are not ours to end.
    """

    def ours(name: str) -> bool:
        match = _LEFTOVER.match(name)
        return bool(match) and (f"cf{match.group(1)}" == prefix or not _pid_alive(int(match.group(1))))

    for line in ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.strip() else ""
        if ours(name):
            if _LEFTOVER.match(name).group(1) == prefix[2:]:
                _kill_namespace_processes(name)
            elif ip("netns", "pids", name, check=False).stdout.strip():
                continue
            ip("netns", "del", name, check=False)
    for line in ip("-o", "link", "show", check=False).stdout.splitlines():
        parts = line.split(":")
        if len(parts) > 1:
            name = parts[1].strip().split("@")[0]
            if ours(name):
                ip("link", "del", name, check=False)


def hosts_fixture(tmp: Path, tag: str, count: int = 3) -> Iterator[HostNetwork]:
    """Body of the `hosts` fixture: build the network, yield it, and always tear it down."""
    network = HostNetwork(count=count, tag=tag)
    try:
        network.create(tmp)
        yield network
    finally:
        network.destroy()


__all__ = ["FAST_LEASES", "Host", "HostNetwork", "hosts_fixture", "remove_leftovers"]
