"""The run store: every read and write of a run's state in Redis.

Writes that belong together commit together: a run is created in one MULTI,
and every transition of a stage is one Lua script (`transitions.py`), fenced by
the attempt's token, so a duplicate delivery or a late commit changes nothing.
The Redis connection is passed in, never global, and only the store uses it:
callers name what they want (`protocol.Store` lists it all).

    reads.py        RunReads     queries of a run, its stages and the run indexes
    logs.py         AttemptLogs  the attempts' live log streams
    transitions.py  Transitions  the Lua transitions (begin, finish, retry, ...)
    records.py      PipelineRecords  pipelines across runs: registry, last ends, assets, chains
    capacity.py     CapacityUpkeep   (a base of Transitions) waking stages that wait for
                                 capacity; giving back a cancelled run's slots
    store.py        RunStore     creating a run, and the bookkeeping around runs: the
                                 outbox, the leases, the delay set, the hooks outbox,
                                 the workers' heartbeats
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Mapping, Sequence
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.lock import Lock
from redis.retry import Retry

from orchestration.engine import durability, hooks
from orchestration.engine.antientropy import MissingMessages
from orchestration.engine.keys import decode_member, encode_member
from orchestration.engine.logs import AttemptLogs
from orchestration.engine.protocol import HookEntry
from orchestration.engine.records import HOOKS_MAXLEN, PipelineRecords
from orchestration.engine.replies import Commit
from orchestration.engine.transitions import Transitions
from orchestration.graph.resolve import RunGraph
from orchestration.settings import Settings
from orchestration.states import RUN_FINAL, TERMINAL, RunStatus, State

__all__ = ["RUN_FINAL", "TERMINAL", "Commit", "RunStore", "connect", "new_run_id"]


def new_run_id() -> str:
    """Sortable by time, unique enough across machines: 'r' + ms timestamp (base 36) + random."""
    return f"r{int(time.time() * 1000):x}{secrets.token_hex(4)}"


def connect(settings: Settings, timeout_s: float | None = None) -> redis.Redis:
    """A client for the configured URL (redis://, rediss://, unix://, or redis+sentinel:// and
    rediss+sentinel://, which follow the primary Sentinel names; with AUTH if the URL has it).

    With `timeout_s`, a client that fails fast instead: no connection retries, every call
    bounded by `timeout_s` (lease renewal must notice a cut link within a heartbeat). Inside
    `redis_url.fail_fast()` (every command-line command) the client always fails fast, within
    `settings.redis_timeout_s`. A malformed URL raises `redis_url.InvalidRedisUrl` (a ValueError).
    """
    from orchestration.engine import (
        redis_url,  # here: connect() is the only part of this module that needs it
    )

    if not settings.redis_url:
        raise ValueError("no Redis URL configured (set CHORDFLOW_REDIS_URL)")
    redis_url.check(settings.redis_url)  # InvalidRedisUrl (a ValueError, exit 2) says what is wrong
    mode = redis_url.current()
    if mode is not None:  # a command-line command: give up within its time limit, never loop
        mode.urls.append(settings.redis_url)
        limit = mode.timeout_s if mode.timeout_s is not None else settings.redis_timeout_s
        timeout_s = limit if timeout_s is None else min(timeout_s, limit)
    if timeout_s is not None:
        quick: dict[str, Any] = {
            "decode_responses": True,
            "socket_timeout": timeout_s,
            "socket_connect_timeout": timeout_s,
            "retry": Retry(ExponentialBackoff(), 0),
        }
        quick.update(_tls(settings))
        return _client(settings.redis_url, quick)
    # Ride out a Redis restart or a short network cut (connection retries, kept apart from
    # stage retries). A retried script whose first reply was lost is refused by its fencing
    # token; what it would have sent is in the outbox, which the reaper re-sends.
    kwargs: dict[str, Any] = {
        "decode_responses": True,
        "health_check_interval": 30,
        "socket_timeout": 10,
        "socket_connect_timeout": 5,
        "retry": Retry(ExponentialBackoff(cap=2.0, base=0.1), 20),
        # READONLY: a primary being demoted (or a REPLICAOF episode); a refused write is not applied
        "retry_on_error": [redis.ConnectionError, redis.TimeoutError, redis.exceptions.ReadOnlyError],
    }
    kwargs.update(_tls(settings))
    return _client(settings.redis_url, kwargs)


def _client(url: str, kwargs: dict[str, Any]) -> redis.Redis:
    """A client of `url`: through Sentinel (re-asked on every reconnect) for redis+sentinel://."""
    from orchestration.engine import redis_url, sentinel

    def on_connect(connection: Any) -> None:
        # SELECT of a db the server does not have: a bad URL (exit 2), not an unreachable Redis
        try:
            connection.on_connect()
        except redis.ResponseError as exc:
            if "DB index" not in str(exc):
                raise
            raise redis_url.InvalidRedisUrl(
                f"CHORDFLOW_REDIS_URL {redis_url.shown(url)!r}: the database {connection.db} does not exist "
                f"on this Redis ({exc}; see its `databases` setting)"
            ) from None

    kwargs = {**kwargs, "redis_connect_func": on_connect}
    if sentinel.is_sentinel(url):
        return sentinel.master_client(sentinel.parse(url), **kwargs)
    return redis.Redis.from_url(url, **kwargs)


def _tls(settings: Settings) -> dict[str, Any]:
    """redis-py's TLS options for a rediss:// or rediss+sentinel:// URL (none otherwise)."""
    if not (settings.redis_url or "").startswith("rediss"):
        return {}
    options: dict[str, Any] = {"ssl_cert_reqs": settings.ssl_cert_reqs}
    if settings.ssl_ca_certs:
        options["ssl_ca_certs"] = settings.ssl_ca_certs
    return options


class RunStore(Transitions, AttemptLogs, PipelineRecords):
    """The Redis run store (see the module docstring); it satisfies `protocol.Store`. Attempts' log
    streams: `logs.AttemptLogs`; records of pipelines across runs: `records.PipelineRecords`."""

    # -- creating a run ----------------------------------------------------------------------
    def create_run(
        self,
        graph: RunGraph,
        run_id: str | None = None,
        idempotency_key: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> tuple[str, bool]:
        """Store the run and its graph at once; returns (run id, created). Ready roots are 'queued'."""
        run_id = run_id or new_run_id()
        k = self.keys
        if idempotency_key and not self._r.set(
            k.idempotency(idempotency_key), run_id, nx=True, ex=int(self.settings.run_ttl_s)
        ):
            existing = self._r.get(k.idempotency(idempotency_key))
            if existing:
                return existing, False
        now = time.time()
        roots = [n.id for n in graph.nodes if not n.needs]
        record = {
            "run_id": run_id,
            "pipeline": graph.name,
            "version": graph.version,
            "status": RunStatus.RUNNING,
            "created_at": f"{now:.3f}",
            "started_at": f"{now:.3f}",
            "remaining": len(graph.nodes),
            "total": len(graph.nodes),
            "fail_fast": int(graph.fail_fast),
            "fence": 0,
            "variables": json.dumps(graph.variables),
            **{key: str(value) for key, value in (extra or {}).items()},
        }
        pipe = self._r.pipeline(transaction=True)
        pipe.hset(k.run(run_id), mapping=record)
        pipe.set(k.graph(run_id), graph.model_dump_json(exclude_defaults=True))
        pipe.hset(
            k.states(run_id),
            mapping={n.id: State.QUEUED if not n.needs else State.PENDING for n in graph.nodes},
        )
        pending = {n.id: len(n.needs) for n in graph.nodes if n.needs}
        if pending:
            pipe.hset(k.pending(run_id), mapping=pending)
        pipe.xadd(
            k.events(run_id),
            {"t": f"{now:.3f}", "kind": "run", "state": RunStatus.RUNNING},
            maxlen=200000,
            approximate=True,
        )
        if roots:
            pipe.zadd(k.outbox(), {encode_member(run_id, sid): now for sid in roots})
        pipe.zadd(k.runs(), {run_id: now})
        pipe.zadd(k.active_runs(), {run_id: now})
        start = {
            "run_id": run_id,
            "pipeline": graph.name,
            "status": RunStatus.RUNNING,
            "stages": len(graph.nodes),
        }
        pipe.xadd(
            k.hooks(), {"e": hooks.announced("run_start", start)}, maxlen=HOOKS_MAXLEN, approximate=True
        )
        pipe.zadd(k.pipeline_runs(graph.name), {run_id: now})
        pipe.execute()
        self._graphs[run_id] = graph
        durability.confirm(self._r, k.replicated_mark(), self.settings, f"run {run_id}")
        durability.record(self.settings, {"run": run_id, "created": True})
        return run_id, True

    def report_progress(self, run_id: str, stage_id: str, attempt: int, done: float, total: float) -> None:
        """What a running stage reported with `ctx.progress` (the attempt's own: `status` shows it
        only while that attempt is the stage's)."""
        fields = {"progress_done": repr(done), "progress_total": repr(total), "progress_attempt": attempt}
        self._r.hset(self.keys.stage(run_id, stage_id), mapping=fields)

    def missing_messages(self) -> MissingMessages:
        """The reads of the reaper's anti-entropy sweep (antientropy.py)."""
        return MissingMessages(self._r, self.keys)

    def primary_identity(self) -> str:
        """Which Redis process answers, as primary: its run id and replication id change when it
        restarts or another one is promoted (the reaper then pauses one lease)."""
        info = self._r.info("server")
        return f"{info.get('run_id')}/{self._r.info('replication').get('master_replid')}"

    def expire_run(self, run_id: str, graph: RunGraph) -> None:
        """Set the TTL on every key of a finished run, and take what of it still waits out of the
        waiting and delay sets (a cancelled run, or one failed while some stage waited for room)."""
        ttl = int(self.settings.run_ttl_s)
        pipe = self._r.pipeline(transaction=False)
        for key in self.keys.run_keys(run_id, [n.id for n in graph.nodes]):
            pipe.expire(key, ttl)
        pipe.execute()
        self._drop_waiters(run_id, graph)

    def append_logs(self, run_id: str, stage_id: str, lines: Sequence[str]) -> None:
        """Add captured output lines to a stage's log."""
        if lines:
            self._r.rpush(self.keys.logs(run_id, stage_id), *lines)

    # -- the outbox: stages made ready, until their message is with the broker ----------------
    def sent(self, run_id: str, stage_ids: Sequence[str]) -> None:
        """The messages of these ready stages are with the broker: take them out of the outbox."""
        if stage_ids:
            self._r.zrem(self.keys.outbox(), *(encode_member(run_id, sid) for sid in stage_ids))

    def unsent(self, before_s: float, limit: int = 200) -> list[tuple[str, str]]:
        """(run id, stage id) of up to `limit` outbox entries made before `before_s` (epoch s,
        Redis's clock): ready stages whose message may never have reached the broker."""
        members = self._r.zrangebyscore(self.keys.outbox(), 0, before_s, start=0, num=limit)
        return [decode_member(member)[:2] for member in members]

    # -- leases: running attempts, by the time their worker must have renewed them ------------
    def expired_leases(self, now_ms: int, limit: int = 200) -> list[tuple[str, str, int | None]]:
        """(run id, stage id, item) of up to `limit` leases that expired by `now_ms` (Redis's clock)."""
        members = self._r.zrangebyscore(self.keys.leases(), 0, now_ms, start=0, num=limit)
        return [decode_member(member) for member in members]

    def lease_state(self, run_id: str, stage_id: str, item: int | None) -> tuple[str | None, int, int]:
        """The unit's state, its lease expiry (ms, Redis's clock; 0 if none) and its attempt (1 if none)."""
        prefix = "" if item is None else f"{item}:"
        state, lease_exp, attempt = self._r.hmget(
            self.keys.unit(run_id, stage_id, item),
            [f"{prefix}state", f"{prefix}lease_exp", f"{prefix}attempt"],
        )
        return state, int(lease_exp or 0), int(attempt or 1)

    def release_lease(self, run_id: str, stage_id: str, item: int | None) -> None:
        """Forget a lease (its attempt ended, or its run did)."""
        self._r.zrem(self.keys.leases(), encode_member(run_id, stage_id, item, lease=True))

    def defer_lease(self, run_id: str, stage_id: str, item: int | None, until_ms: int) -> None:
        """Move an existing lease's expiry to `until_ms` (Redis's clock); no lease is added."""
        member = encode_member(run_id, stage_id, item, lease=True)
        self._r.zadd(self.keys.leases(), {member: until_ms}, xx=True)

    def reaper_lock(self, timeout_s: float) -> Lock:
        """The lock held by the one worker that reaps at a time (not taken yet; never blocks)."""
        return Lock(self._r, self.keys.reaper_lock(), timeout=timeout_s, blocking=False, thread_local=False)

    # -- the delay set: retry messages waiting for their time ---------------------------------
    def delay(self, payload: str, delay_s: float) -> None:
        """Send a message again after `delay_s` (Redis's clock), through the delay set."""
        due_ms = int((self.server_time() + delay_s) * 1000)
        self._r.zadd(self.keys.delayed(), {payload: due_ms})

    def due_delayed(self, limit: int = 100, ahead_s: float = 0.0) -> list[tuple[str, float]]:
        """Claim messages of the delay set (retries, stages woken or given a rate slot) due within
        `ahead_s`, each claimed by exactly one caller: (payload, seconds until it is due, >= 0), so
        the caller can send it with that countdown and it starts on time, not a tick late."""
        now_ms = int(self.server_time() * 1000)
        claimed = []
        horizon = now_ms + int(ahead_s * 1000)
        for payload, due in self._r.zrangebyscore(
            self.keys.delayed(), 0, horizon, start=0, num=limit, withscores=True
        ):
            if self._r.zrem(self.keys.delayed(), payload):
                claimed.append((payload, max(0.0, (due - now_ms) / 1000)))
        return claimed

    def delayed_payloads(self, limit: int = 1000) -> list[str]:
        """Up to `limit` messages waiting in the delay set, soonest first (left there)."""
        return self._r.zrange(self.keys.delayed(), 0, limit - 1)

    # -- the hooks outbox: a stream read by the hook senders' consumer group -----------------
    def create_hook_group(self, group: str) -> None:
        """Create the consumer group `group` of the hooks outbox (and the stream), unless it exists."""
        try:
            self._r.xgroup_create(self.keys.hooks(), group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def read_hooks(self, group: str, consumer: str, count: int, block_ms: int) -> list[HookEntry]:
        """Up to `count` new entries for `consumer` (waiting up to `block_ms`), now pending on it."""
        reply = self._r.xreadgroup(group, consumer, {self.keys.hooks(): ">"}, count=count, block=block_ms)
        return [entry for _stream, entries in _streams(reply) for entry in entries]

    def claim_idle_hooks(
        self, group: str, consumer: str, idle_ms: int, count: int, pages: int = 10
    ) -> list[HookEntry]:
        """Take over for `consumer` the entries pending on other consumers for over `idle_ms`
        (XAUTOCLAIM, up to `pages` pages of `count`). An id whose entry is gone comes with None."""
        claimed: list[HookEntry] = []
        cursor = "0-0"
        for _ in range(pages):
            reply = self._r.xautoclaim(
                self.keys.hooks(), group, consumer, idle_ms, start_id=cursor, count=count
            )
            cursor, entries = reply[0], reply[1]
            claimed += entries
            if cursor in ("0-0", b"0-0") or not entries:
                break
        return claimed

    def hold_hooks(self, group: str, consumer: str, entry_ids: Sequence[str]) -> None:
        """Reset the idle time of entries pending on `consumer`, so no other consumer takes them."""
        self._r.xclaim(self.keys.hooks(), group, consumer, 0, list(entry_ids), justid=True)

    def ack_hook(self, group: str, entry_id: str) -> None:
        """A delivered entry: acknowledge it and delete it from the stream, in one round trip."""
        pipe = self._r.pipeline(transaction=False)
        pipe.xack(self.keys.hooks(), group, entry_id)
        pipe.xdel(self.keys.hooks(), entry_id)
        pipe.execute()

    def forget_hook_consumers(self, group: str, keep: str, quiet_ms: float) -> list[str]:
        """Drop from `group` the consumers (but `keep`) with nothing pending and idle over
        `quiet_ms`: the senders of workers that are gone. Returns their names."""
        gone = []
        for consumer in self._r.xinfo_consumers(self.keys.hooks(), group):
            name = consumer.get("name")
            if (
                name != keep
                and int(consumer.get("pending", 0)) == 0  # not a state
                and int(consumer.get("idle", 0)) > quiet_ms
            ):
                self._r.xgroup_delconsumer(self.keys.hooks(), group, name)
                gone.append(name)
        return gone

    # -- workers and schedules ----------------------------------------------------------------
    def publish_worker(self, hostname: str, info: Mapping[str, Any]) -> None:
        """A worker's heartbeat: its queues, resources and stage types, stamped with Redis's clock."""
        self._r.hset(self.keys.workers(), hostname, json.dumps({**info, "seen": self.server_time()}))

    def remove_worker(self, hostname: str) -> None:
        """A worker that stops takes its heartbeat with it."""
        self._r.hdel(self.keys.workers(), hostname)

    def live_workers(self) -> dict[str, dict[str, Any]]:
        """Hostname -> heartbeat of the workers seen within `settings.worker_ttl_s`."""
        now = self.server_time()
        out = {}
        for host, raw in self._r.hgetall(self.keys.workers()).items():
            info = json.loads(raw)
            if now - info.get("seen", 0) <= self.settings.worker_ttl_s:
                out[host] = info
        return out

    def record_schedule_outcome(self, name: str, outcome: Mapping[str, Any]) -> None:
        """Keep what the last firing of schedule `name` did (tick, run_id or error, at)."""
        self._r.hset(self.keys.schedule_outcomes(), name, json.dumps(outcome))


def _streams(reply: Any) -> list[tuple[str, list[HookEntry]]]:
    """XREADGROUP's reply as [(stream, entries)], whichever shape the client returned."""
    if not reply:
        return []
    if isinstance(reply, dict):  # RESP3
        return [
            (stream, list(entries[0] if entries and isinstance(entries[0], list) else entries))
            for stream, entries in reply.items()
        ]
    return [(stream, list(entries)) for stream, entries in reply]
