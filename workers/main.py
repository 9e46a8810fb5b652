"""`chordflow worker`: detect the machine, pick queues, start Celery workers, publish what we serve.

GPU stages get their own Celery worker process whose concurrency is the
number of GPUs, so a machine never runs more GPU stages at once than it has
GPUs, whatever the concurrency of its CPU worker.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import asdict, dataclass
from typing import Any

import psutil
import redis
from celery import signals

from orchestration.engine import broker
from orchestration.engine.dispatch import Dispatcher, signature_of
from orchestration.engine.hook_sender import HookSender
from orchestration.engine.limits import Capacity
from orchestration.engine.reaper import Reaper
from orchestration.engine.registry import REGISTRY
from orchestration.engine.stage_message import MalformedMessage
from orchestration.engine.store import RunStore, connect
from orchestration.errors import RunNotFound
from orchestration.fleet.redis_health import redis_warnings
from orchestration.settings import Settings

from .app import create_app, load_stage_modules

log = logging.getLogger("chordflow.worker")
TICK_S = 0.5  # the services' tick: heartbeats, the delay set, the reaper (every other tick)


@dataclass(frozen=True)
class Machine:
    cpus: int
    memory_gb: float
    gpus: int
    devices: tuple[str, ...] = ()  # the GPUs' ids (CUDA_VISIBLE_DEVICES's, else 0..gpus-1)


def cuda_visible() -> list[str] | None:
    """The GPU ids CUDA_VISIBLE_DEVICES names ('-1' and blanks are none), or None when it is unset."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return None
    return [d.strip() for d in visible.split(",") if d.strip() and d.strip() != "-1"]


def gpu_devices(gpus: int) -> tuple[str, ...]:
    """The ids of the GPUs a worker gives out: the first `gpus` of CUDA_VISIBLE_DEVICES when it names
    that many, else 0 .. gpus-1."""
    visible = cuda_visible() or []
    if len(visible) >= gpus:
        return tuple(visible[:gpus])
    return tuple(str(i) for i in range(gpus))


def detect_gpus() -> int:
    visible = cuda_visible()
    if visible is not None:
        return len(visible)
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(
                ["nvidia-smi", "-L"], check=False, capture_output=True, text=True, timeout=10
            ).stdout
            return sum(1 for line in out.splitlines() if line.startswith("GPU "))
        except (OSError, subprocess.SubprocessError):
            return 0
    return 0


def detect_machine(gpus: int | None = None, memory_gb: float | None = None) -> Machine:
    count = gpus if gpus is not None else detect_gpus()
    return Machine(
        cpus=psutil.cpu_count() or 1,
        memory_gb=memory_gb if memory_gb is not None else round(psutil.virtual_memory().total / 2**30, 1),
        gpus=count,
        devices=gpu_devices(count),
    )


def queues_for(machine: Machine, settings: Settings) -> list[str]:
    queues = [settings.cpu_queue]
    if machine.memory_gb >= settings.highmem_threshold_gb:
        queues.append(settings.highmem_queue)
    if machine.gpus > 0:
        queues.append(settings.gpu_queue)
    return [q for q in queues if q in settings.queues]


class Services(threading.Thread):
    """In the worker's main process: publish what we serve, send retries whose delay is over,
    and reap (when this worker holds the reaper lock)."""

    def __init__(self, settings: Settings, info: dict, hostname: str, drain: bool = True):
        super().__init__(daemon=True, name="chordflow-services")
        self.settings, self.info, self.hostname, self.drain = settings, info, hostname, drain
        self.stop = threading.Event()

    def run(self) -> None:
        store = RunStore(connect(self.settings), self.settings)
        app = create_app(self.settings)
        reaper = Reaper(store, Dispatcher(app, store), self.hostname)
        ticks = 0
        while not self.stop.is_set():
            try:
                if ticks % max(1, int(self.settings.heartbeat_s / TICK_S)) == 0:
                    # with the stage messages it holds, which only its memory records (broker.py)
                    store.fleet.publish_worker(self.hostname, {**self.info, "held": broker.held()})
                if self.drain:
                    # what falls due before the next tick goes now, with the rest of its wait as a
                    # countdown: a rate limit's slots are kept to the millisecond, not to the tick
                    send_due(app, store, store.outbox.due_delayed(ahead_s=TICK_S))
                    if ticks % 2 == 0:
                        reaper.tick()
            except Exception:
                log.warning("worker services: Redis unavailable, retrying", exc_info=True)
            ticks += 1
            self.stop.wait(TICK_S)
        reaper.release()  # another worker reaps from its next tick, not once the lock's TTL runs out
        try:
            store.fleet.remove_worker(self.hostname)
        except Exception:
            log.debug("could not remove worker %s from the live set", self.hostname, exc_info=True)


def send_due(app: Any, store: RunStore, due: list[tuple[str, float]]) -> None:
    """Send the delay set's entries this worker claimed; one whose send fails goes back to the set
    (a process that dies in between leaves its stage to the reaper's anti-entropy sweep)."""
    if not due:
        return
    with app.producer_or_acquire() as producer:
        for i, (message, wait_s) in enumerate(due):
            try:
                signature = signature_of(message, store)
            except (RunNotFound, KeyError, MalformedMessage) as exc:  # its run is gone: nothing to send
                log.warning("dropping a delayed message for no run: %s (%s)", message[:200], exc)
                continue
            try:
                signature.apply_async(producer=producer, countdown=wait_s if wait_s > 0.005 else None)
            except Exception:
                log.warning("could not send a delayed message; it goes back to the delay set", exc_info=True)
                for text, left_s in due[i:]:
                    store.outbox.delay(text, left_s)
                raise


def run_worker(
    settings: Settings,
    queues: list[str] | None = None,
    concurrency: int | None = None,
    hostname: str | None = None,
    gpus: int | None = None,
    memory_gb: float | None = None,
    imports: list[str] | None = None,
    loglevel: str = "INFO",
    gpu_only: bool = False,
    pool: str = "prefork",
) -> int:
    """Start serving; blocks until the worker is stopped. Returns an exit code."""
    load_stage_modules([*settings.imports, *(imports or [])])
    machine = detect_machine(gpus, memory_gb)
    host = hostname or socket.gethostname()
    chosen = queues or queues_for(machine, settings)
    unknown = [q for q in chosen if q not in settings.queues]
    if unknown:
        print(
            f"error: unknown queue(s) {', '.join(unknown)}; configured: {', '.join(settings.queues)}",
            file=sys.stderr,
        )
        return 2
    gpu_child = None
    if not gpu_only and settings.gpu_queue in chosen and machine.gpus > 0 and len(chosen) > 1:
        # GPU stages in their own process, concurrency = GPUs.
        chosen = [q for q in chosen if q != settings.gpu_queue]
        argv = [
            sys.executable,
            "-m",
            "workers",
            "--queues",
            settings.gpu_queue,
            "--gpus",
            str(machine.gpus),
            "--hostname",
            host,
            "--gpu-only",
            "--loglevel",
            loglevel,
            "--memory-gb",
            str(machine.memory_gb),
        ]
        for module in imports or []:
            argv += ["--import", module]
        gpu_child = subprocess.Popen(argv)
    if (gpu_only or chosen == [settings.gpu_queue]) and concurrency is None:
        concurrency = max(1, machine.gpus)  # a GPU stage per GPU; the ledger enforces it anyway
    slots = concurrency or machine.cpus
    capacity = Capacity(host, machine.devices, machine.memory_gb, slots)
    info = {
        "queues": chosen,
        "machine": asdict(machine),
        "capacity": capacity.describe(),
        "pid": os.getpid(),
        "types": [t.describe() for t in REGISTRY],
        "aliases": REGISTRY.names(),
    }
    services = Services(settings, info, f"{host}/{'gpu' if gpu_only else 'main'}", drain=not gpu_only)
    # Hooks and webhooks are delivered from here, off every stage's path (not in the pool's children).
    sender = HookSender(settings, f"{host}/{'gpu' if gpu_only else 'main'}/{os.getpid()}")

    @signals.worker_ready.connect(weak=False)
    def _ready(**_: object) -> None:
        services.start()
        sender.start()

    @signals.worker_shutdown.connect(weak=False)
    def _shutdown(**_: object) -> None:
        services.stop.set()
        sender.stop.set()
        if services.is_alive():
            # its last act takes this worker's heartbeat out of the live set: a stopped worker must
            # not count as capacity (submit's check, the sweep) until its heartbeat grows old
            services.join(timeout=5)

    try:
        for warning in redis_warnings(connect(settings)):
            log.warning("WARNING: %s", warning)
            print(f"WARNING: {warning}", file=sys.stderr)
    except redis.RedisError:
        log.warning("could not check Redis's persistence settings", exc_info=True)
    app = create_app(settings, hostname=host, capacity=capacity)
    nodename = f"{'gpu' if gpu_only else 'celery'}@{host}"
    argv = [
        "worker",
        "-Q",
        ",".join(chosen),
        "-c",
        str(slots),
        "-n",
        nodename,
        "--loglevel",
        loglevel,
        # no -E: task events cost every stage three messages; Flower turns them on when it runs
        "--without-mingle",
        "--without-gossip",
        "--pool",
        pool,
    ]
    try:
        app.worker_main(argv=argv)
    finally:
        if gpu_child is not None and gpu_child.poll() is None:
            gpu_child.send_signal(signal.SIGTERM)
            try:
                gpu_child.wait(timeout=20)
            except subprocess.TimeoutExpired:
                gpu_child.kill()
    return 0
