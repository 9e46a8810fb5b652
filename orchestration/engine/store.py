"""The run store: every read and write of a run's state in Redis, one part per responsibility.

Writes that belong together commit together: a run is created in one MULTI,
and every transition of a stage is one Lua script (`transitions.py`), fenced by
the attempt's token, so a duplicate delivery or a late commit changes nothing.
The Redis connection is passed in, never global, and only the store's parts use it:
callers name the part and what they want of it (`store.runs.create_run(...)`,
`store.transitions.finish(req)`). `RunStore` builds the parts over one client, one
`Settings` and one `Keys`, and holds them:

    runs         runs.py         Runs              creating a run, its reads and the run indexes,
                                                   a stage's progress, a run's expiry; Redis's clock
    transitions  transitions.py  Transitions       the Lua transitions (begin, renew, claim, retry,
                                                   finish, start_fanout, control, reopen); leases
    capacity     capacity.py     CapacityUpkeep    waking stages that wait for a limit or capacity;
                                                   giving back a cancelled run's slots
    logs         logs.py         AttemptLogs       the attempts' live log streams (and the older lists)
    records      records.py      PipelineRecords   pipelines across runs: registry, last ends, assets,
                                                   skipped runs, chains, stale alerts, schedules
    outbox       outbox.py       Outbox            messages waiting to be sent: the outbox, the delay set
    hooks        hook_stream.py  HookStream        the hooks outbox, as the hook senders read it
    fleet        heartbeats.py   Fleet             workers' heartbeats, the reaper's lock, the primary
    missing      antientropy.py  MissingMessages   the reads of the reaper's anti-entropy sweep

A part that needs another is given it (a cancel gives back the run's slots: `Transitions` holds
`capacity` and `runs`); none inherits from another. Callers are typed by these classes: no part
has a Protocol, as each has one implementation and the unit tests' stand-ins are one method each
(`runs.context_get` for a stage context, `runs.graph` for the hook sender, `fleet.live_workers`
for placement). Give a part one when a second implementation of it, or a fake worth typing, comes.
"""

from __future__ import annotations

from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from orchestration.engine.antientropy import MissingMessages
from orchestration.engine.capacity import CapacityUpkeep
from orchestration.engine.heartbeats import Fleet
from orchestration.engine.hook_stream import HookStream
from orchestration.engine.keys import Keys
from orchestration.engine.logs import AttemptLogs
from orchestration.engine.outbox import Outbox
from orchestration.engine.records import PipelineRecords
from orchestration.engine.replies import Commit
from orchestration.engine.runs import Runs, new_run_id
from orchestration.engine.transitions import Transitions
from orchestration.settings import Settings
from orchestration.states import RUN_FINAL, TERMINAL

__all__ = ["RUN_FINAL", "TERMINAL", "Commit", "RunStore", "connect", "new_run_id"]


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


class RunStore:
    """The Redis run store: its parts (see the module docstring), built over one client."""

    def __init__(self, client: redis.Redis, settings: Settings):
        self._r: Any = client  # the client the parts share (private: tests reach in)
        self._settings = settings
        self.keys = Keys(settings.key_prefix)
        self.capacity = CapacityUpkeep(client, settings, self.keys)
        self.runs = Runs(client, settings, self.keys, self.capacity)
        self.transitions = Transitions(client, settings, self.keys, self.runs, self.capacity)
        self.logs = AttemptLogs(client, settings, self.keys)
        self.records = PipelineRecords(client, settings, self.keys)
        self.outbox = Outbox(client, self.keys, clock=self.runs.server_time)
        self.hooks = HookStream(client, self.keys)
        self.fleet = Fleet(client, settings, self.keys, clock=self.runs.server_time)
        self.missing = MissingMessages(client, self.keys)

    @property
    def settings(self) -> Settings:
        """The settings every part was built with (read-only: build another store for others)."""
        return self._settings
