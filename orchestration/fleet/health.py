"""Is the fleet healthy? Redis, its durability settings, workers per queue, queue depths, stale pipelines.

Unhealthy (a non-zero `chordflow health`) when Redis is unreachable, when it refuses writes (out of memory at
`maxmemory`, or read-only) or its used memory is near `maxmemory`, when a queue holds work (waiting, delayed
or delivered messages) that no live worker serves, when a stage waits for GPUs or memory no live worker
serving its queue has (fleet/capacity.py), when a pipeline's last success is older than its `max_age` (or a
registered `depends_on` max_age naming it), or when an asset was last provided longer ago than its providers'
or a `requires` max_age. Redis without AOF or with an eviction policy is a loud warning, not a failure.

The Celery Redis transport keeps each queue as lists (one per priority step) whose messages carry no
timestamp, so the age of a queue's oldest message is measured from the first time a health check saw
it at the head of the queue (kept in a small hash): a lower bound that grows across checks, 0 on the first.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis
from kombu.transport.redis import PRIORITY_STEPS, Channel
from redis.backoff import NoBackoff
from redis.retry import Retry

from orchestration.engine import redis_url
from orchestration.engine.keys import Keys
from orchestration.engine.store import RunStore, connect
from orchestration.errors import RunNotFound
from orchestration.fleet.capacity import add_capacity
from orchestration.fleet.pipelines import AssetFreshness, registry_limits, stale_assets
from orchestration.fleet.redis_health import Replication, redis_warnings, redis_write_problems, replication
from orchestration.fleet.redis_health import text as _text
from orchestration.fleet.schedules import list_schedules
from orchestration.settings import Settings
from orchestration.states import RunStatus

LAST_SUCCESS_SCAN = 200  # newest runs of a pipeline searched for its last success


def quick_client(settings: Settings, timeout_s: float = 5.0) -> redis.Redis:
    """`connect(settings)` without its patient reconnect loop: a check answers in seconds."""
    client = connect(settings, timeout_s=timeout_s)
    client.set_retry(Retry(NoBackoff(), 1))  # one quick second try, then the check reports
    return client


# -- queues ------------------------------------------------------------------------------------------


@dataclass
class QueueReport:
    name: str
    waiting: int = 0  # messages in the broker's lists
    delayed: int = 0  # retries waiting in Chordflow's delay set
    delivered: int = 0  # taken by a worker, not yet acknowledged
    workers: list[str] = field(default_factory=list)
    oldest_waiting_s: float | None = None  # see the module docstring: a lower bound
    oldest_task: str | None = None

    @property
    def work(self) -> int:
        return self.waiting + self.delayed + self.delivered


def queue_lists(queue: str) -> list[str]:
    """The Redis lists kombu keeps for a queue: one per priority step (`cpu`, `cpu\\x06\\x163`, ...)."""
    return [queue if not step else f"{queue}{Channel.sep}{step}" for step in PRIORITY_STEPS]


def queue_reports(
    store: RunStore, broker: redis.Redis, workers: Mapping[str, Mapping[str, Any]]
) -> list[QueueReport]:
    """Each configured queue's work and the live workers that serve it. The queues are kombu's
    lists on the `broker` Redis (read directly: they are the broker's, not the run store's)."""
    settings = store.settings
    oldest = Keys(settings.key_prefix).health_oldest()
    reports = {q: QueueReport(q) for q in settings.queues}
    for host, info in sorted(workers.items()):
        for queue in info.get("queues", []):
            if queue in reports:
                reports[queue].workers.append(host)
    now = store.runs.server_time()
    for report in reports.values():
        for name in queue_lists(report.name):
            _measure_list(broker, oldest, name, report, now)
    for queue in _delayed_queues(store):
        if queue in reports:
            reports[queue].delayed += 1
    for info in workers.values():  # stage messages a worker holds are in its heartbeat only
        for queue, count in (info.get("held") or {}).items():
            if queue in reports:
                reports[queue].delivered += int(count)
    for raw in broker.hvals(Channel.unacked_key):
        queue = _routing_key(raw)
        if queue in reports:
            reports[queue].delivered += 1
    return list(reports.values())


def _measure_list(r: redis.Redis, oldest: str, name: str, report: QueueReport, now: float) -> None:
    """Add list `name` to `report`; `oldest` is the hash of the heads health checks have seen."""
    length = r.llen(name)
    if not length:
        _note(r.hdel, oldest, name)
        return
    report.waiting += length
    head = r.lindex(name, -1)  # LPUSHed, BRPOPed: the oldest is at the tail
    envelope = _json(head)
    headers = envelope.get("headers") or {}
    tag = (envelope.get("properties") or {}).get("delivery_tag") or headers.get("id") or str(head)[:200]
    seen = now
    known = _json(r.hget(oldest, name))
    if known.get("tag") == tag:
        seen = float(known.get("seen", now))
    else:
        _note(r.hset, oldest, name, json.dumps({"tag": tag, "seen": now}))
    age = max(0.0, now - seen)
    if report.oldest_waiting_s is None or age > report.oldest_waiting_s:
        report.oldest_waiting_s = age
        report.oldest_task = f"{headers.get('task', '?')}{headers.get('argsrepr', '')}"


def _note(write: Any, *args: Any) -> None:
    """A write of health's own bookkeeping: when Redis refuses writes (reported apart, by
    `redis_write_problems`), the oldest-message ages just start over."""
    try:
        write(*args)
    except redis.ResponseError:
        pass


def _delayed_queues(store: RunStore, limit: int = 1000) -> Iterable[str]:
    for payload in store.outbox.delayed_payloads(limit):
        try:
            run_id, stage_id, *_ = json.loads(str(payload))
            yield store.runs.graph(run_id).node(stage_id).queue
        except (RunNotFound, KeyError, ValueError, TypeError):
            continue


def _routing_key(raw: Any) -> str | None:
    try:
        _message, _exchange, routing_key = json.loads(raw)
        return routing_key
    except (ValueError, TypeError):
        return None


def _json(raw: Any) -> dict[str, Any]:
    try:
        value = json.loads(raw) if raw else {}
    except (ValueError, TypeError):
        return {}
    return value if isinstance(value, dict) else {}


# -- stale pipelines -----------------------------------------------------------------------------------


@dataclass
class Freshness:
    pipeline: str
    max_age_s: float
    last_success_at: float | None  # epoch s; None: no success among the kept runs
    age_s: float  # since the last success, or since the pipeline was first known
    stale: bool


def max_ages(store: RunStore, settings: Settings) -> dict[str, tuple[float, float | None]]:
    """Pipeline -> (max_age_s, first known at): `max_age` from schedules' stored pipelines, else the
    `max_age_s` field of a pipeline's newest run record (when submit records it)."""
    found: dict[str, tuple[float, float | None]] = {}
    for entry in list_schedules(settings):
        if entry.max_age_s:
            found[entry.pipeline] = (entry.max_age_s, entry.added_at)
    for name in store.runs.pipelines():
        newest = store.runs.recent_runs(1, name)
        first_at = store.runs.first_run_at(name)
        if name in found:
            age, added = found[name]
            found[name] = (age, _earliest(added, first_at))
            continue
        raw = store.runs.run_fields([str(newest[0])], ["max_age_s"])[0][0] if newest else None
        if raw:
            found[name] = (float(raw), first_at)
    for name, (limit, registered_at) in registry_limits(store).items():  # max_age, depends_on's max_age
        age, added = found.get(name, (limit, None))
        found[name] = (min(age, limit), _earliest(added, registered_at, store.runs.first_run_at(name)))
    return found


def _earliest(*times: float | None) -> float | None:
    return min((t for t in times if t is not None), default=None)


def last_success(store: RunStore, pipeline: str) -> float | None:
    """When the newest succeeded run of `pipeline` finished (epoch s), among its newest runs."""
    ids = [str(i) for i in store.runs.recent_runs(LAST_SUCCESS_SCAN, pipeline)]
    for status, finished_at in store.runs.run_fields(ids, ["status", "finished_at"]):
        if status == RunStatus.SUCCEEDED and finished_at:
            return float(finished_at)
    return None


def freshness(store: RunStore, settings: Settings, now: float) -> list[Freshness]:
    out = []
    for pipeline, (max_age, known_since) in sorted(max_ages(store, settings).items()):
        success = last_success(store, pipeline)
        since = success if success is not None else known_since
        age = max(0.0, now - since) if since is not None else 0.0
        out.append(Freshness(pipeline, max_age, success, age, age > max_age))
    return out


# -- the whole check -----------------------------------------------------------------------------------


@dataclass
class HealthReport:
    redis_url: str
    reachable: bool
    warnings: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    workers: dict[str, dict[str, Any]] = field(default_factory=dict)
    queues: list[QueueReport] = field(default_factory=list)
    pipelines: list[Freshness] = field(default_factory=list)
    assets: list[AssetFreshness] = field(default_factory=list)
    capacity: dict[str, dict[str, Any]] = field(default_factory=dict)  # queue -> stages waiting for room
    replication: Replication = field(default_factory=Replication)  # role, replicas and their lag

    @property
    def healthy(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {
            "healthy": self.healthy,
            "redis": {"url": self.redis_url, "reachable": self.reachable, **self.replication.as_dict()},
            "problems": self.problems,
            "warnings": self.warnings,
            "workers": self.workers,
            "queues": [{**q.__dict__, "work": q.work} for q in self.queues],
            "pipelines": [p.__dict__ for p in self.pipelines],
            "assets": [a.__dict__ for a in self.assets],
            "capacity": self.capacity,
        }


def check(settings: Settings, timeout_s: float = 5.0) -> HealthReport:
    """Run every check; `problems` says why the fleet is unhealthy, `warnings` what is risky."""
    report = HealthReport(redis_url.shown(settings.redis_url or ""), reachable=False)
    client = quick_client(settings, timeout_s)
    try:
        client.ping()
    except redis.RedisError as exc:
        report.problems.append(f"Redis unreachable at {report.redis_url}: {exc}")
        return report
    report.reachable = True
    store = RunStore(client, settings)
    report.warnings = redis_warnings(client)
    report.replication = replication(client)
    report.warnings.extend(report.replication.warnings())
    report.problems.extend(redis_write_problems(client, settings))
    report.workers = store.fleet.live_workers()
    report.queues = queue_reports(store, client, report.workers)
    for q in report.queues:
        if q.work and not q.workers:
            report.problems.append(
                f"queue '{q.name}' has {q.work} message(s) ({q.waiting} waiting, {q.delayed} delayed, "
                f"{q.delivered} delivered) but no live worker serves it: start one with "
                f"`chordflow worker --queues {q.name}`"
            )
    add_capacity(report, store)  # stages waiting for GPUs or memory, per queue
    report.pipelines = freshness(store, settings, store.runs.server_time())
    for p in report.pipelines:
        if p.stale:
            since = (
                "last succeeded" if p.last_success_at is not None else "has not succeeded since it was known,"
            )
            report.problems.append(
                f"pipeline '{p.pipeline}' is stale: it {since} {p.age_s:.0f}s ago, "
                f"more than its max_age of {p.max_age_s:g}s"
            )
    report.assets = stale_assets(store, store.runs.server_time())
    for a in report.assets:
        if a.stale:
            since = (
                f"was last provided by {a.pipeline} ({a.run_id})"
                if a.run_id
                else "has never been provided, for"
            )
            report.problems.append(
                f"asset '{a.asset}' is stale: it {since} {a.age_s:.0f}s ago, more than its max_age of "
                f"{a.max_age_s:g}s"
            )
    return report


def worker_alive(settings: Settings, hostname: str) -> tuple[bool, str]:
    """Whether the worker of `hostname` published a heartbeat within the worker TTL."""
    try:
        client = quick_client(settings)
        seconds, micros = client.time()
        published = client.hgetall(Keys(settings.key_prefix).workers())
    except redis.RedisError as exc:
        return False, f"redis unreachable: {exc}"
    now = seconds + micros / 1e6
    for name, raw in published.items():
        name = _text(name)
        if name.split("/")[0] == hostname:
            age = now - float(_json(raw).get("seen", 0))
            if age <= settings.worker_ttl_s:
                return True, f"worker {name} alive (heartbeat {age:.1f}s ago)"
            return False, f"worker {name}: last heartbeat {age:.0f}s ago (limit {settings.worker_ttl_s:g}s)"
    return False, f"no worker of host {hostname} has published a heartbeat"
