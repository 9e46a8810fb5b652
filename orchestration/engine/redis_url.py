"""The Redis URL of a command: checked before use, shown without its password, and the
fail-fast mode the command line runs its Redis clients in.

    check("redis://:secret@db:6380/2")    # the URL itself, or InvalidRedisUrl (exit 2) saying what is wrong
    shown("redis://:secret@db:6380/2")    # 'redis://***@db:6380/2'

A command-line command runs under `fail_fast()`: every `store.connect()` inside it builds a
client that gives up after `Settings.redis_timeout_s` (no reconnect loop), and the command
reports `error: cannot reach Redis at redis://host:port/db (reason)` with exit 1. Workers, the
hook sender and the reaper never run under it: they keep their patient client, which rides out
a Redis restart.
"""

from __future__ import annotations

import contextvars
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from redis.connection import Connection, SSLConnection, UnixDomainSocketConnection, parse_url

from orchestration.engine import sentinel
from orchestration.errors import ChordflowError, InvalidInput

SCHEMES = ("redis", "rediss", "unix", *sentinel.SCHEMES)
FORM = (
    "redis://[[user]:password@]host[:port][/db] (rediss:// for TLS, unix:///path/to/socket), or "
    f"{sentinel.FORM}"
)
# scheme://userinfo@ — up to the last `@` of the authority, as URL parsers read it (a password
# holding an unencoded `@` is masked whole)
MAX_DB = 2**31 - 1  # what SELECT takes at most; the server's `databases` limit is its own
_CREDENTIALS = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/?#\s]*@")


class InvalidRedisUrl(InvalidInput, ValueError):
    """CHORDFLOW_REDIS_URL is not a Redis URL (exit code 2)."""


class RedisUnreachable(ChordflowError):
    """A command could not reach its Redis (exit code 1)."""

    def __init__(self, url: str | None, reason: str):
        self.url, self.reason = url, reason
        super().__init__(
            f"cannot reach Redis at {shown(url) if url else 'the configured URL'} ({mask(reason)})"
        )


def mask(text: str) -> str:
    """`text` with the user:password of every URL in it replaced by `***`."""
    return _CREDENTIALS.sub(r"\1***@", text)


def _quoted(url: str) -> str:
    text = mask(url)
    return repr(text if len(text) <= 200 else text[:200] + "…")


def check(url: str, name: str = "CHORDFLOW_REDIS_URL") -> str:
    """`url` if it is a Redis URL redis-py can use; else InvalidRedisUrl saying what is wrong
    (the password never appears in the message)."""

    def bad(why: str) -> InvalidRedisUrl:
        return InvalidRedisUrl(f"{name} {_quoted(url)} is not a Redis URL: {why}; use {FORM}")

    if not isinstance(url, str) or not url.strip():
        raise bad("it is empty")
    if any(ch.isspace() or ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F for ch in url):
        raise bad("it contains whitespace or control characters")
    if "://" not in url:
        raise bad("it has no scheme (it must start with redis://, rediss://, unix:// or redis+sentinel://)")
    if sentinel.is_sentinel(url):
        try:
            sentinel.parse(url)
        except ValueError as exc:
            raise bad(str(exc)) from None
        return url
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise bad(str(exc)) from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise bad(
            f"the scheme is {scheme + '://' if scheme else 'missing'}, not redis://, rediss://, unix:// "
            "or redis+sentinel://"
        )
    if scheme == "unix":
        if not parts.path:
            raise bad("a unix:// URL needs the socket's path (unix:///path/to/redis.sock)")
        return _options_checked(url, bad)
    if not parts.hostname:
        raise bad("it names no host")
    try:
        port = parts.port
    except ValueError:
        port_text = parts.netloc.rpartition("@")[2].rpartition(":")[2]
        raise bad(f"the port {port_text[:20]!r} is not a number from 1 to 65535") from None
    if port == 0:
        raise bad("the port 0 is not a number from 1 to 65535")
    db = unquote(parts.path or "").strip("/")
    if db and not db.isdigit():
        raise bad(f"the database {db[:20]!r} is not a number (the path is /DB, e.g. /0)")
    if db and int(db) > MAX_DB:
        raise bad(f"the database {db[:20]!r} is not a number from 0 to {MAX_DB}")
    return _options_checked(url, bad)


def _options_checked(url: str, bad: Callable[[str], InvalidRedisUrl]) -> str:
    """`url` if redis-py takes its ?options (known names, values of the right type), else `bad`."""
    try:
        kwargs = parse_url(url)
    except ValueError as exc:  # "Invalid value for 'socket_timeout' in connection URL."
        name = re.search(r"'([^']+)'", str(exc))
        raise bad(f"the option {name.group(1) if name else '?'!r} has a value of the wrong type") from None
    db = kwargs.get("db", 0)
    if not isinstance(db, int) or not 0 <= db <= MAX_DB:
        raise bad(f"the database {db!r} is not a number from 0 to {MAX_DB}")
    kwargs.pop("connection_class", None)  # parse_url's choice by scheme; ours is below
    scheme = url.split("://", 1)[0].lower()
    cls = {"unix": UnixDomainSocketConnection, "rediss": SSLConnection}.get(scheme, Connection)
    try:
        cls(**kwargs)  # builds the connection object only: nothing is opened
    except TypeError as exc:
        name = re.search(r"argument '([^']+)'", str(exc))
        option = name.group(1) if name else str(exc)
        raise bad(f"the option {option[:40]!r} is not a Redis connection option") from None
    except ValueError as exc:
        raise bad(f"an option's value is wrong: {exc}") from None
    return url


def shown(url: str) -> str:
    """`redis://host:port/db` (credentials as `***`, default port and db filled in) to name a
    Redis in a message."""
    if sentinel.is_sentinel(url):
        return sentinel.shown(url)
    try:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme == "unix":
            return f"unix://{'***@' if parts.username or parts.password else ''}{parts.path}"
        host = parts.hostname or "localhost"
        port = parts.port or 6379
        db = unquote(parts.path or "").strip("/") or "0"
    except ValueError:
        return mask(url)
    auth = "***@" if parts.username or parts.password else ""
    host = f"[{host}]" if ":" in host else host
    return f"{scheme}://{auth}{host}:{port}/{db}"


# -- the command line's fail-fast mode ----------------------------------------------------------


@dataclass
class FailFast:
    """What `store.connect()` reads inside `fail_fast()`: the client's time limit and the URLs
    it connected to (the first names the Redis in a `cannot reach` message)."""

    timeout_s: float | None = None  # None: the Settings' redis_timeout_s
    urls: list[str] = field(default_factory=list)


_MODE: contextvars.ContextVar[FailFast | None] = contextvars.ContextVar("chordflow_fail_fast", default=None)


def current() -> FailFast | None:
    """The fail-fast mode in force here, if any."""
    return _MODE.get()


@contextmanager
def fail_fast(timeout_s: float | None = None) -> Iterator[FailFast]:
    """Inside: clients from `store.connect()` fail within `timeout_s` (default: the settings'
    `redis_timeout_s`) instead of retrying for half a minute."""
    mode = FailFast(timeout_s)
    token = _MODE.set(mode)
    try:
        yield mode
    finally:
        _MODE.reset(token)


__all__ = [
    "FORM",
    "SCHEMES",
    "FailFast",
    "InvalidRedisUrl",
    "RedisUnreachable",
    "check",
    "current",
    "fail_fast",
    "mask",
    "shown",
]
