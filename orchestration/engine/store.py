"""The run store: every read and write of a run's state in Redis.

Writes that belong together commit together: a run is created in one MULTI,
and every transition of a stage is one Lua script (`lua/*.lua`), fenced by the
attempt's token, so a duplicate delivery or a late commit changes nothing.
The Redis connection is passed in, never global.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from orchestration.engine.keys import Keys
from orchestration.engine.states import RUN_FINAL, TERMINAL, lua_prelude
from orchestration.errors import RunNotFound
from orchestration.graph.resolve import RunGraph
from orchestration.settings import Settings

__all__ = ["RUN_FINAL", "TERMINAL", "Commit", "RunStore", "connect", "new_run_id"]


def _script(name: str, allow_oom: bool = False) -> str:
    """A script's source: the state names (from states.py), the shared helpers, then the script.

    `allow_oom` marks it runnable when Redis is at `maxmemory` (Redis 7's script flags): only
    for the small bookkeeping writes that let an attempt end and a run finish under memory
    pressure (begin, retry, a failure's commit), never for outputs or context values.
    """
    lua = resources.files("orchestration.engine").joinpath("lua")
    body = (
        lua_prelude()
        + lua.joinpath("_common.lua").read_text(encoding="utf-8")
        + lua.joinpath(name).read_text(encoding="utf-8")
    )
    return ("#!lua flags=allow-oom\n" + body) if allow_oom else body


def new_run_id() -> str:
    """Sortable by time, unique enough across machines: 'r' + ms timestamp (base 36) + random."""
    return f"r{int(time.time() * 1000):x}{secrets.token_hex(4)}"


def connect(settings: Settings, timeout_s: float | None = None) -> redis.Redis:
    """A client for the configured URL (redis:// or rediss://, with AUTH if the URL has it).

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
        return redis.Redis.from_url(settings.redis_url, **quick)
    # Ride out a Redis restart or a short network cut (connection retries, kept apart from
    # stage retries). A retried script whose first reply was lost is refused by its fencing
    # token; what it would have sent is in the outbox, which the reaper re-sends.
    kwargs: dict[str, Any] = {
        "decode_responses": True,
        "health_check_interval": 30,
        "socket_timeout": 10,
        "socket_connect_timeout": 5,
        "retry": Retry(ExponentialBackoff(cap=2.0, base=0.1), 20),
        "retry_on_error": [redis.ConnectionError, redis.TimeoutError],
    }
    kwargs.update(_tls(settings))
    return redis.Redis.from_url(settings.redis_url, **kwargs)


def _tls(settings: Settings) -> dict[str, Any]:
    """redis-py's TLS options for a rediss:// URL (none for redis://)."""
    if not (settings.redis_url or "").startswith("rediss://"):
        return {}
    options: dict[str, Any] = {"ssl_cert_reqs": settings.ssl_cert_reqs}
    if settings.ssl_ca_certs:
        options["ssl_ca_certs"] = settings.ssl_ca_certs
    return options


@dataclass
class Commit:
    """What finish.lua decided."""

    verdict: str  # ok | item | stale | late
    finalized: bool
    run_status: str
    ready: list[str] = field(default_factory=list)
    revoke: list[str] = field(default_factory=list)
    next_item: int | None = None
    reason: str = ""  # why, when the verdict is 'invalid' (nothing was written)


class _Script:
    """A script that may also run under Redis's memory limit (`allow-oom`, Redis 7's script
    flags), falling back to the plain script on a Redis older than 7, which has no flags."""

    def __init__(self, client: redis.Redis, name: str):
        self._plain = client.register_script(_script(name))
        self._oom: Any = client.register_script(_script(name, allow_oom=True))

    def __call__(self, keys: Sequence[str], args: Sequence[Any], allow_oom: bool) -> Any:
        if allow_oom and self._oom is not None:
            try:
                return self._oom(keys=keys, args=args)
            except redis.ResponseError as exc:
                if "near '#'" not in str(exc) and "shebang" not in str(exc).lower():
                    raise
                self._oom = None  # Redis < 7: no script flags
        return self._plain(keys=keys, args=args)


class RunStore:
    def __init__(self, client: redis.Redis, settings: Settings):
        # redis-py types every reply as bytes | str | ...; our clients decode to str, so the
        # replies are used as what they are (str, list[str], dict[str, str]).
        self.r: Any = client
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self._begin = _Script(client, "begin.lua")
        self._renew = client.register_script(_script("renew.lua"))
        self._retry = _Script(client, "retry.lua")
        self._finish = _Script(client, "finish.lua")
        self._fanout = client.register_script(_script("fanout.lua"))
        self._control = client.register_script(_script("control.lua"))
        self._reopen = client.register_script(_script("reopen.lua"))
        self._graphs: dict[str, RunGraph] = {}

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
        if idempotency_key and not self.r.set(
            k.idempotency(idempotency_key), run_id, nx=True, ex=int(self.settings.run_ttl_s)
        ):
            existing = self.r.get(k.idempotency(idempotency_key))
            if existing:
                return existing, False
        now = time.time()
        roots = [n.id for n in graph.nodes if not n.needs]
        record = {
            "run_id": run_id,
            "pipeline": graph.name,
            "version": graph.version,
            "status": "running",
            "created_at": f"{now:.3f}",
            "started_at": f"{now:.3f}",
            "remaining": len(graph.nodes),
            "total": len(graph.nodes),
            "fail_fast": int(graph.fail_fast),
            "fence": 0,
            "variables": json.dumps(graph.variables),
            **{key: str(value) for key, value in (extra or {}).items()},
        }
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(k.run(run_id), mapping=record)
        pipe.set(k.graph(run_id), graph.model_dump_json(exclude_defaults=True))
        pipe.hset(
            k.states(run_id), mapping={n.id: "queued" if not n.needs else "pending" for n in graph.nodes}
        )
        pending = {n.id: len(n.needs) for n in graph.nodes if n.needs}
        if pending:
            pipe.hset(k.pending(run_id), mapping=pending)
        pipe.xadd(
            k.events(run_id),
            {"t": f"{now:.3f}", "kind": "run", "state": "running"},
            maxlen=200000,
            approximate=True,
        )
        if roots:
            pipe.zadd(k.outbox(), {f"{run_id}|{sid}": now for sid in roots})
        pipe.zadd(k.runs(), {run_id: now})
        pipe.zadd(k.pipeline_runs(graph.name), {run_id: now})
        pipe.execute()
        self._graphs[run_id] = graph
        return run_id, True

    # -- reading ---------------------------------------------------------------------------
    def graph(self, run_id: str) -> RunGraph:
        graph = self._graphs.get(run_id)
        if graph is None:
            raw = self.r.get(self.keys.graph(run_id))
            if raw is None:
                raise RunNotFound(run_id)
            graph = RunGraph.model_validate_json(raw)
            if len(self._graphs) > 256:
                self._graphs.clear()
            self._graphs[run_id] = graph
        return graph

    def run(self, run_id: str) -> dict[str, str]:
        record = self.r.hgetall(self.keys.run(run_id))
        if not record:
            raise RunNotFound(run_id)
        return record

    def states(self, run_id: str) -> dict[str, str]:
        return self.r.hgetall(self.keys.states(run_id))

    def stage_details(self, run_id: str, stage_ids: Sequence[str]) -> dict[str, dict[str, str]]:
        pipe = self.r.pipeline(transaction=False)
        for sid in stage_ids:
            pipe.hgetall(self.keys.stage(run_id, sid))
        return dict(zip(stage_ids, pipe.execute()))

    def items(self, run_id: str, stage_id: str) -> dict[int, dict[str, str]]:
        out: dict[int, dict[str, str]] = {}
        for fieldname, value in self.r.hgetall(self.keys.items(run_id, stage_id)).items():
            index, _, name = fieldname.partition(":")
            out.setdefault(int(index), {})[name] = value
        return out

    def outputs(self, run_id: str, stage_ids: Iterable[str] | None = None) -> dict[str, Any]:
        key = self.keys.outputs(run_id)
        if stage_ids is None:
            return {sid: json.loads(v) for sid, v in self.r.hgetall(key).items()}
        ids = list(stage_ids)
        if not ids:
            return {}
        return {sid: json.loads(v) if v is not None else None for sid, v in zip(ids, self.r.hmget(key, ids))}

    def output(self, run_id: str, stage_id: str) -> Any:
        raw = self.r.hget(self.keys.outputs(run_id), stage_id)
        return json.loads(raw) if raw is not None else None

    def run_status(self, run_id: str) -> str | None:
        return self.r.hget(self.keys.run(run_id), "status")

    def cached_output(self, key: str) -> str | None:
        """A cached stage output (JSON text) under a cache key, or None."""
        return self.r.get(self.keys.cache(key))

    def context(self, run_id: str) -> dict[str, Any]:
        return {k: json.loads(v) for k, v in self.r.hgetall(self.keys.context(run_id)).items()}

    def context_get(self, run_id: str, key: str) -> Any:
        raw = self.r.hget(self.keys.context(run_id), key)
        return json.loads(raw) if raw is not None else None

    def metrics(self, run_id: str) -> dict[str, float]:
        return {k: _number(v) for k, v in self.r.hgetall(self.keys.metrics(run_id)).items()}

    def events(
        self, run_id: str, after: str = "0-0", block_ms: int | None = None, count: int = 1000
    ) -> list[tuple[str, dict[str, str]]]:
        """Events after stream id `after`; blocks up to `block_ms` for new ones."""
        res = self.r.xread({self.keys.events(run_id): after}, count=count, block=block_ms)
        return [(eid, fields) for _, entries in res for eid, fields in entries] if res else []

    def logs(self, run_id: str, stage_id: str) -> list[str]:
        return self.r.lrange(self.keys.logs(run_id, stage_id), 0, -1)

    def append_logs(self, run_id: str, stage_id: str, lines: Sequence[str]) -> None:
        if lines:
            self.r.rpush(self.keys.logs(run_id, stage_id), *lines)

    def recent_runs(self, limit: int = 20, pipeline: str | None = None) -> list[str]:
        key = self.keys.pipeline_runs(pipeline) if pipeline else self.keys.runs()
        return self.r.zrevrange(key, 0, limit - 1)

    # -- transitions (Lua) -------------------------------------------------------------------
    def unit_key(self, run_id: str, stage_id: str, item: int | None) -> str:
        return self.keys.items(run_id, stage_id) if item is not None else self.keys.stage(run_id, stage_id)

    @staticmethod
    def lease_member(run_id: str, stage_id: str, item: int | None) -> str:
        return f"{run_id}|{stage_id}|{'' if item is None else item}"

    def begin(
        self,
        run_id: str,
        stage_id: str,
        item: int | None,
        attempt: int,
        host: str,
        queue: str,
        task_id: str,
        payload: str,
        read: Sequence[str] = (),
        notify: Sequence[str] = (),
    ) -> list[Any]:
        """Start an attempt; with 'run' comes its token and the JSON outputs of the `read` stages.

        `notify`: hook entries (JSON) enqueued with the start, for the hook senders."""
        k = self.keys
        args = {
            "stage": stage_id,
            "item": item,
            "attempt": attempt,
            "host": host,
            "queue": queue,
            "task_id": task_id,
            "lease_ms": int(self.settings.lease_s * 1000),
            "max_crashes": self.settings.max_deliveries,
            "payload": payload,
            "lease": self.lease_member(run_id, stage_id, item),
            "reads": list(read),
            "notify": list(notify),
        }
        return self._begin(
            keys=[
                k.run(run_id),
                k.states(run_id),
                self.unit_key(run_id, stage_id, item),
                k.events(run_id),
                k.parked(run_id),
                k.leases(),
                k.outputs(run_id),
                k.hooks(),
            ],
            args=[json.dumps(args, separators=(",", ":"))],
            allow_oom=True,
        )

    def renew(self, run_id: str, stage_id: str, item: int | None, token: str) -> bool:
        prefix = "" if item is None else f"{item}:"
        return bool(
            self._renew(
                keys=[self.unit_key(run_id, stage_id, item), self.keys.leases()],
                args=[
                    prefix,
                    token,
                    int(self.settings.lease_s * 1000),
                    self.lease_member(run_id, stage_id, item),
                ],
            )
        )

    def retry(
        self,
        run_id: str,
        stage_id: str,
        item: int | None,
        token: str,
        error: Mapping[str, Any],
        next_attempt: int,
        delay_s: float,
        park: bool,
        payload: str,
        notify: Sequence[str] = (),
    ) -> bool:
        k = self.keys
        res = self._retry(
            keys=[
                self.unit_key(run_id, stage_id, item),
                k.states(run_id),
                k.events(run_id),
                k.delayed(),
                k.leases(),
                k.hooks(),
            ],
            args=[
                stage_id,
                "" if item is None else item,
                token,
                json.dumps(error),
                next_attempt,
                int(delay_s * 1000),
                "1" if park else "0",
                payload,
                self.lease_member(run_id, stage_id, item),
                *notify,
            ],
            allow_oom=True,
        )
        return bool(res[0] == "ok")

    def finish(
        self,
        run_id: str,
        graph: RunGraph,
        stage_id: str,
        item: int | None,
        token: str,
        outcome: str,
        output_json: str = "",
        error: Mapping[str, Any] | None = None,
        context_writes: Sequence[tuple[str, str, str]] = (),
        metrics: Mapping[str, float] | None = None,
        children: Sequence[str] = (),
        descendants: Sequence[str] = (),
        cache_key: str | None = None,
        cache_ttl_s: float = 0,
        cached: bool = False,
        notify: Sequence[str] = (),
        run_hook: bool = False,
    ) -> Commit:
        """Commit an attempt's end (or, with token '', a stage's end decided outside any attempt).

        The script checks everything before it writes: a verdict 'invalid' wrote nothing, and
        `Commit.reason` says why. A failure's commit may run when Redis is at maxmemory."""
        k = self.keys
        node = graph.node(stage_id)
        failing = outcome == "failed"
        others: list[str] = []
        if failing and node.critical:
            others = (
                [n.id for n in graph.nodes if n.id != stage_id]
                if graph.fail_fast
                else [sid for sid in descendants if sid != stage_id]
            )
        args = {
            "stage": stage_id,
            "item": item,
            "token": token,
            "outcome": outcome,
            "output": output_json,
            "error": json.dumps(error) if error else "",
            "context": [list(w) for w in context_writes],
            "metrics": [[name, repr(float(v))] for name, v in (metrics or {}).items()],
            "children": list(children),
            "descendants": list(descendants),
            "others": others,
            "critical": node.critical,
            "fail_fast": graph.fail_fast,
            "lease": self.lease_member(run_id, stage_id, item),
            "windowed": bool(node.max_concurrency),
            "run_id": run_id,
            "cache_ttl": cache_ttl_s if cache_key else 0,
            "cached": cached,
            "notify": list(notify),
            "run_hook": run_hook,
            "pipeline": graph.name,
            "fanout_cap": self.settings.fanout_output_cap_bytes if item is not None else 0,
        }
        keys = [
            k.run(run_id),
            k.states(run_id),
            self.unit_key(run_id, stage_id, item),
            k.events(run_id),
            k.outputs(run_id),
            k.context(run_id),
            k.metrics(run_id),
            k.pending(run_id),
            k.stage(run_id, stage_id),
            k.leases(),
            k.outbox(),
            k.hooks(),
            k.cache(cache_key) if cache_key else k.run(run_id),
        ]
        for sid in others:
            keys += [k.stage(run_id, sid), k.items(run_id, sid)]
        # A failure that writes nothing of its own may be committed at maxmemory, so the run ends.
        verdict, finalized, status, ready, revoke, next_item = self._finish(
            keys=keys,
            args=[json.dumps(args, separators=(",", ":"))],
            allow_oom=failing and not context_writes and not metrics,
        )
        if verdict == "invalid":
            return Commit(verdict, False, "", reason=status)
        return Commit(
            verdict,
            bool(finalized),
            status,
            list(ready),
            list(revoke),
            int(next_item) if next_item != "" else None,
        )

    def start_fanout(
        self, run_id: str, stage_id: str, total: int, window: int, queue: str
    ) -> list[int] | None:
        """Start a fan-out stage once. Returns the items to send first ([] when every item was kept
        by a retried run), or None when this call did not start it."""
        k = self.keys
        res = self._fanout(
            keys=[
                k.states(run_id),
                k.stage(run_id, stage_id),
                k.events(run_id),
                k.run(run_id),
                k.items(run_id, stage_id),
            ],
            args=[stage_id, total, window, queue],
        )
        if res[0] == 0:
            return None
        if res[0] == 2:
            return []
        return [int(i) for i in res[1:]] if len(res) > 1 else list(range(window))

    def control(self, run_id: str, op: str, pipeline: str = "") -> tuple[str, list[str]]:
        """cancel, pause or resume the run; its hook event (run_complete 'cancelled', run_paused,
        run_resumed) goes to the hooks outbox in the same step. `pipeline` defaults to the run's."""
        k = self.keys
        keys = [k.run(run_id), k.states(run_id), k.events(run_id), k.parked(run_id), k.hooks()]
        stage_ids: list[str] = []
        if op == "cancel":
            stage_ids = [n.id for n in self.graph(run_id).nodes]
            for sid in stage_ids:
                keys += [k.stage(run_id, sid), k.items(run_id, sid)]
        verdict, payload = self._control(keys=keys, args=[op, "", run_id, pipeline, json.dumps(stage_ids)])
        return verdict, list(payload) if isinstance(payload, list) else [payload]

    def reopen(self, run_id: str, graph: RunGraph) -> tuple[str, list[str]]:
        """Put a failed or cancelled run back to running from its point of failure."""
        k = self.keys
        pipe = self.r.pipeline(transaction=False)
        for key in k.run_keys(run_id, [n.id for n in graph.nodes]):
            pipe.persist(key)
        pipe.execute()
        keys = [k.run(run_id), k.states(run_id), k.pending(run_id), k.events(run_id), k.outbox()]
        for n in graph.nodes:
            keys += [k.stage(run_id, n.id), k.items(run_id, n.id)]
        verdict, detail = self._reopen(
            keys=keys,
            args=["", run_id, json.dumps([[n.id, list(n.needs)] for n in graph.nodes])],
        )
        return verdict, list(detail) if isinstance(detail, list) else [detail]

    def sent(self, run_id: str, stage_ids: Sequence[str]) -> None:
        """The messages of these ready stages are with the broker: take them out of the outbox."""
        if stage_ids:
            self.r.zrem(self.keys.outbox(), *(f"{run_id}|{sid}" for sid in stage_ids))

    def expire_run(self, run_id: str, graph: RunGraph) -> None:
        """Set the TTL on every key of a finished run."""
        ttl = int(self.settings.run_ttl_s)
        pipe = self.r.pipeline(transaction=False)
        for key in self.keys.run_keys(run_id, [n.id for n in graph.nodes]):
            pipe.expire(key, ttl)
        pipe.execute()

    # -- workers -----------------------------------------------------------------------------
    def publish_worker(self, hostname: str, info: Mapping[str, Any]) -> None:
        self.r.hset(self.keys.workers(), hostname, json.dumps({**info, "seen": self.server_time()}))

    def remove_worker(self, hostname: str) -> None:
        self.r.hdel(self.keys.workers(), hostname)

    def live_workers(self) -> dict[str, dict[str, Any]]:
        now = self.server_time()
        out = {}
        for host, raw in self.r.hgetall(self.keys.workers()).items():
            info = json.loads(raw)
            if now - info.get("seen", 0) <= self.settings.worker_ttl_s:
                out[host] = info
        return out

    def server_time(self) -> float:
        seconds, micros = self.r.time()
        return seconds + micros / 1e6

    def delay(self, payload: str, delay_s: float) -> None:
        """Send a message again after `delay_s` (Redis's clock), through the delay set."""
        due_ms = int((self.server_time() + delay_s) * 1000)
        self.r.zadd(self.keys.delayed(), {payload: due_ms})

    def due_delayed(self, limit: int = 100) -> list[str]:
        """Claim retry messages whose time has come (each claimed by exactly one caller)."""
        now_ms = int(self.server_time() * 1000)
        claimed = []
        for payload in self.r.zrangebyscore(self.keys.delayed(), 0, now_ms, start=0, num=limit):
            if self.r.zrem(self.keys.delayed(), payload):
                claimed.append(payload)
        return claimed


def _number(value: str) -> float | int:
    number = float(value)
    return int(number) if number.is_integer() else number
