"""Redis behind Sentinel: the `redis+sentinel://` URL and a client that follows the primary.

    redis+sentinel://[:PASSWORD@]HOST:PORT[,HOST:PORT...]/MASTER_NAME[/DB]   (rediss+sentinel:// for TLS)

The hosts are the Sentinels; the password (and user) is the data nodes' (the Sentinels are asked
without one); TLS applies to the data nodes. The store, the broker (broker.py's SentinelTransport)
and beat (RedBeat's Sentinel settings) all read this one form.

The store's client asks Sentinel for the primary on every connection it opens: redis-py's own
Sentinel connection re-resolves only in `connect()`, while a command's reconnect goes through
`connect_check_health`, which retries the cached address of a dead primary for as long as the
client's retry policy lasts (redis-py #3874; 35 s with ours).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import redis
from redis.sentinel import (
    MasterNotFoundError,
    Sentinel,
    SentinelManagedConnection,
    SentinelManagedSSLConnection,
)

SCHEMES = ("redis+sentinel", "rediss+sentinel")
FORM = "redis+sentinel://[:password@]host:port[,host:port...]/master_name[/db] (rediss+sentinel:// for TLS)"
_NAME = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
_HOST_PORT = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9._-]+)):(?P<port>[0-9]{1,5})$")


@dataclass(frozen=True)
class SentinelUrl:
    """A parsed `redis+sentinel://` URL."""

    sentinels: tuple[tuple[str, int], ...]
    master_name: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False

    def shown(self) -> str:
        """The URL with its credentials as `***` (and the db filled in), to name it in a message."""
        hosts = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.sentinels)
        auth = "***@" if self.username or self.password else ""
        return f"{'rediss' if self.tls else 'redis'}+sentinel://{auth}{hosts}/{self.master_name}/{self.db}"

    def node_kwargs(self) -> dict[str, Any]:
        """Credentials of the data nodes, for redis-py and kombu."""
        out: dict[str, Any] = {"db": self.db}
        if self.username:
            out["username"] = self.username
        if self.password:
            out["password"] = self.password
        return out


def is_sentinel(url: str | None) -> bool:
    return bool(url) and str(url).split("://", 1)[0].lower() in SCHEMES


def parse(url: str) -> SentinelUrl:
    """The parts of a Sentinel URL, or ValueError saying what is wrong (never quoting the password)."""
    scheme, _, rest = url.partition("://")
    if scheme.lower() not in SCHEMES:
        raise ValueError(f"the scheme is {scheme}://, not redis+sentinel:// or rediss+sentinel://")
    if "?" in rest or "#" in rest:
        raise ValueError("a Sentinel URL takes no ?options or #fragment")
    authority, _, path = rest.partition("/")
    userinfo, _, hosts = authority.rpartition("@")
    user, colon, secret = userinfo.partition(":")
    username = unquote(user) or None
    password = unquote(secret) if colon and secret else None
    sentinels = []
    for item in hosts.split(","):
        match = _HOST_PORT.match(item.strip())
        if not match:
            raise ValueError(
                f"the Sentinel address {item[:60]!r} is not HOST:PORT (every Sentinel needs its port)"
            )
        port = int(match["port"])
        if not 1 <= port <= 65535:
            raise ValueError(f"the port {port} of Sentinel {item[:60]!r} is not a number from 1 to 65535")
        sentinels.append((match["v6"] or match["host"], port))
    segments = [unquote(s) for s in path.split("/")] if path else []
    if segments and segments[-1] == "":
        segments.pop()  # a trailing slash
    if not segments or not segments[0]:
        raise ValueError("it names no master (the path is /MASTER_NAME[/DB], e.g. /mymaster/0)")
    if len(segments) > 2:
        raise ValueError(f"the path /{'/'.join(segments)[:60]} has more than /MASTER_NAME/DB")
    name = segments[0]
    if not _NAME.match(name):
        raise ValueError(
            f"the master name {name[:60]!r} is not a Sentinel master name (letters, digits, . _ -)"
        )
    db_text = segments[1] if len(segments) == 2 else "0"
    if not db_text.isdigit() or int(db_text) > 2**31 - 1:
        raise ValueError(f"the database {db_text[:20]!r} is not a number from 0 to 2147483647")
    return SentinelUrl(tuple(sentinels), name, int(db_text), username, password, scheme.lower() == SCHEMES[1])


def shown(url: str) -> str:
    try:
        return parse(url).shown()
    except ValueError:
        return re.sub(r"://[^/@]*@", "://***@", url)


# -- a client of the current primary ------------------------------------------------------------


class _Following:
    """Ask Sentinel where the primary is before every socket this connection opens (#3874)."""

    connection_pool: Any
    host: str
    port: int
    _sock: Any

    def connect_check_health(self, check_health: bool = True, retry_socket_connect: bool = True) -> None:
        if self._sock:
            return
        if self.connection_pool.is_master:  # MasterNotFoundError (a ConnectionError) when none is known
            self.host, self.port = self.connection_pool.get_master_address()
        # one attempt at this address: the client's retry (with backoff) asks Sentinel again
        super().connect_check_health(check_health=check_health, retry_socket_connect=False)  # type: ignore[misc]


class FollowingConnection(_Following, SentinelManagedConnection):
    pass


class FollowingSSLConnection(_Following, SentinelManagedSSLConnection):
    pass


class _Sentinel(Sentinel):
    def __init__(self, sentinels: list[tuple[str, int]], **kwargs: Any):
        super().__init__(sentinels, **kwargs)
        self.sentinel_hosts = list(sentinels)

    def discover_master(self, service_name: str) -> Any:
        try:
            return super().discover_master(service_name)
        except MasterNotFoundError:  # redis-py's message holds the repr of every Sentinel's client
            hosts = ",".join(f"{h}:{p}" for h, p in self.sentinel_hosts)
            raise MasterNotFoundError(
                f"no Sentinel of {hosts} knows a primary named {service_name!r} (they are unreachable, "
                "or a failover is under way)"
            ) from None


def sentinel(parsed: SentinelUrl, timeout_s: float | None) -> Sentinel:
    """A Sentinel manager for `parsed`; each Sentinel is asked within `timeout_s` (default 2 s)."""
    limit = timeout_s if timeout_s is not None else 2.0
    manager = _Sentinel(
        list(parsed.sentinels),
        sentinel_kwargs={"socket_timeout": limit, "socket_connect_timeout": limit},
    )
    return manager


def master_client(parsed: SentinelUrl, **kwargs: Any) -> redis.Redis:
    """A client of the current primary of `parsed`, re-resolved on every reconnect; `kwargs` are
    redis-py connection options (timeouts, retry, decode_responses, ssl_*)."""
    manager = sentinel(parsed, kwargs.get("socket_connect_timeout"))
    connection_class = FollowingSSLConnection if parsed.tls else FollowingConnection
    if not parsed.tls:
        kwargs = {k: v for k, v in kwargs.items() if not k.startswith("ssl_")}
    return manager.master_for(
        parsed.master_name, connection_class=connection_class, **parsed.node_kwargs(), **kwargs
    )


__all__ = ["FORM", "SCHEMES", "SentinelUrl", "is_sentinel", "master_client", "parse", "sentinel", "shown"]
