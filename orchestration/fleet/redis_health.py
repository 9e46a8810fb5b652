"""What `health` says about Redis itself: its durability settings, whether it takes writes, and
its replication (its role, its replicas and how far behind each one is).

Unhealthy while Redis refuses writes (out of memory at `maxmemory`, or read-only: a replica, or a
failover under way) or its used memory is near `maxmemory`. Without AOF, or with an eviction
policy, it is a loud warning. A replica more than REPLICA_LAG_WARN_BYTES behind, or one that has
not answered its primary for REPLICA_SILENT_WARN_S, is a warning: a failover to it would lose the
writes it lacks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import redis

from orchestration.engine.keys import Keys
from orchestration.settings import Settings

MEMORY_NEAR_FULL = 0.9  # used_memory / maxmemory at which health reports Redis memory
PROBE_TTL_MS = 10_000  # the write probe's key expires by itself
REPLICA_LAG_WARN_BYTES = 1 << 20
REPLICA_SILENT_WARN_S = 10


def redis_warnings(client: redis.Redis) -> list[str]:
    """Loud warnings when a Redis restart or memory pressure can lose queued work."""
    try:
        config = {**client.config_get("appendonly"), **client.config_get("maxmemory-policy")}
    except redis.ResponseError:
        return [
            (
                "cannot read Redis's configuration (CONFIG is disabled here): make sure it runs with "
                "'appendonly yes' and 'maxmemory-policy noeviction', or a restart or memory pressure "
                "loses queued work"
            )
        ]
    config = {text(k): text(v) for k, v in config.items()}
    warnings = []
    if config.get("appendonly") != "yes":
        warnings.append(
            "Redis has no AOF persistence (appendonly no): a Redis restart loses queued stages "
            "and run state. Run it with 'appendonly yes'"
        )
    policy = config.get("maxmemory-policy", "")
    if policy != "noeviction":
        warnings.append(
            f"Redis evicts keys under memory pressure (maxmemory-policy {policy}): queued "
            "stages and run state can vanish. Set 'maxmemory-policy noeviction'"
        )
    return warnings


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# -- can Redis take writes? -----------------------------------------------------------------------------


def redis_write_problems(client: redis.Redis, settings: Settings) -> list[str]:
    """Why Redis refuses, or is about to refuse, the writes every run needs: a write probe
    refused (OOM: at `maxmemory` with noeviction; READONLY: a replica, or a failover), or used
    memory at MEMORY_NEAR_FULL of `maxmemory` or more. Empty when Redis takes writes."""
    used = limit = None
    try:
        memory = client.info("memory")
        used, limit = int(memory.get("used_memory", 0)), int(memory.get("maxmemory", 0))
    except (redis.ResponseError, ValueError, TypeError):
        pass  # INFO disabled or renamed: the write probe still tells
    usage = f"used_memory {_size(used)} of maxmemory {_size(limit)}" if used is not None and limit else ""
    try:
        client.set(Keys(settings.key_prefix).health_probe(), "1", px=PROBE_TTL_MS)
    except redis.ResponseError as exc:
        text = _first_line(exc)
        if isinstance(exc, redis.OutOfMemoryError) or text.upper().startswith("OOM") or "maxmemory" in text:
            return [
                (
                    f"Redis memory is full and Redis refuses writes{f' ({usage})' if usage else ''}: {text} "
                    "No stage can start or finish until you raise maxmemory (CONFIG SET maxmemory) or free "
                    "memory"
                )
            ]
        if isinstance(exc, redis.ReadOnlyError) or text.upper().startswith("READONLY"):
            return [
                (
                    f"Redis is read-only and refuses writes ({text}): it is a replica, or a failover is "
                    "under way; point CHORDFLOW_REDIS_URL at the primary"
                )
            ]
        return [f"Redis refused a write: {text}"]
    if used is not None and limit and used >= MEMORY_NEAR_FULL * limit:
        return [
            (
                f"Redis memory is {used / limit:.0%} full ({usage}): at maxmemory, with noeviction, Redis "
                "refuses the writes runs need and stages fail. Raise maxmemory (CONFIG SET maxmemory) or "
                "free memory (finished runs expire after CHORDFLOW_RUN_TTL_S)"
            )
        ]
    return []


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    for unit, scale in (("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


# -- replication ---------------------------------------------------------------------------------------


@dataclass
class Replication:
    """Redis's role and, on a primary, its replicas: address, state, bytes behind, seconds since
    their last answer."""

    role: str = "unknown"
    primary: str | None = None  # on a replica: the primary it follows, and whether the link is up
    link: str | None = None
    replicas: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"role": self.role, "primary": self.primary, "link": self.link, "replicas": self.replicas}

    def lines(self) -> list[str]:
        """What `chordflow health` prints about replication (one line, plus one per replica)."""
        if self.role == "replica":
            return [f"redis role: replica of {self.primary} (link {self.link})"]
        out = [f"redis role: {self.role}, {len(self.replicas)} replica(s)"]
        out += [
            f"  replica {r['address']}: {r['state']}, {_size(r['lag_bytes'])} behind, last answer {r['silent_s']}s ago"
            for r in self.replicas
        ]
        return out

    def warnings(self) -> list[str]:
        out = []
        for r in self.replicas:
            if r["lag_bytes"] > REPLICA_LAG_WARN_BYTES or r["silent_s"] > REPLICA_SILENT_WARN_S:
                out.append(
                    f"Redis replica {r['address']} is {_size(r['lag_bytes'])} behind its primary (last answer "
                    f"{r['silent_s']}s ago): a failover to it would lose the writes it lacks"
                )
        return out


def replication(client: redis.Redis) -> Replication:
    """Redis's role and replicas, from INFO replication (an empty report where INFO is disabled)."""
    try:
        info = client.info("replication")
    except redis.ResponseError:
        return Replication()
    role = text(info.get("role", "unknown"))
    report = Replication("primary" if role == "master" else "replica" if role == "slave" else role)
    if role == "slave":
        report.primary = f"{info.get('master_host')}:{info.get('master_port')}"
        report.link = text(info.get("master_link_status", "unknown"))
    offset = int(info.get("master_repl_offset", 0) or 0)
    for key, value in sorted(info.items()):
        if key.startswith("slave") and isinstance(value, dict):
            report.replicas.append(
                {
                    "address": f"{value.get('ip')}:{value.get('port')}",
                    "state": text(value.get("state", "?")),
                    "lag_bytes": max(0, offset - int(value.get("offset", 0) or 0)),
                    "silent_s": int(value.get("lag", 0) or 0),
                }
            )
    return report
