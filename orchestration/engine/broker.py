"""kombu's Redis transport, made to ride out every Redis fault without ending the worker.

At `maxmemory` (with `noeviction`, the setting we recommend) or on a read-only
replica, Redis refuses kombu's own writes: the acknowledgement of a finished
stage (a MULTI of ZREM + HDEL, all refused under OOM since Redis 7) and the
bookkeeping of a received message. A primary demoted to a replica ends a
blocked BRPOP with `UNBLOCKED force unblock from blocking operation, instance
state changed (master -> replica?)`; a restarting Redis answers `LOADING`, a
replica that lost its primary `MASTERDOWN`. Celery's consumer catches only the
transport's *connection* errors around those calls; anything else ends the
worker ("Unrecoverable error"), and the message is then redelivered to the next
worker, which ends too. Counted as connection errors, they are logged, the
consumer reconnects with its usual backoff, and the worker process stays up;
our leases and the reaper take care of the stage (its attempt is fenced).

One more way out, in kombu itself: when the consumer's connection breaks, Celery
closes it, and closing the channel restores its unacknowledged messages through
a pool that is rebuilt from the (already detached) connection, raising
`AttributeError: 'NoneType' object has no attribute 'hostname'`. Here that is a
connection error too, and the delivery tags it could not restore are restored by
the next channel this process opens, once Redis answers again (`begin` drops the
duplicate of a stage that is still running).
"""

from __future__ import annotations

import logging
from typing import Any

from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import redis as kombu_redis
from redis import exceptions

from orchestration.engine import sentinel

log = logging.getLogger("chordflow.broker")


class StateChanged(exceptions.ConnectionError):
    """Redis ended a blocking command because it changed role, or cannot serve yet."""


#: Redis answered but will not write, or not yet.
REFUSED_WRITES = (
    exceptions.OutOfMemoryError,
    exceptions.ReadOnlyError,
    exceptions.ExecAbortError,
    exceptions.BusyLoadingError,
    StateChanged,
)
# error replies (first word) that mean "this Redis cannot serve us now", not "the request is wrong"
_STATE_REPLIES = ("UNBLOCKED", "MASTERDOWN", "LOADING", "READONLY", "OOM", "TRYAGAIN", "CLUSTERDOWN")

#: delivery tags an old channel could not restore; the next channel restores them
_PENDING_RESTORE: set[str] = set()


def _as_connection_error(exc: BaseException) -> BaseException:
    if isinstance(exc, exceptions.ResponseError) and str(exc).split(" ", 1)[0].upper() in _STATE_REPLIES:
        return StateChanged(str(exc))
    return exc


class QoS(kombu_redis.QoS):
    def restore_unacked(self, client: Any = None) -> Any:
        try:
            return super().restore_unacked(client)
        except (AttributeError, *kombu_redis.Transport.connection_errors, *REFUSED_WRITES) as exc:
            delivered: Any = self._delivered
            tags = {str(tag) for tag in delivered}
            _PENDING_RESTORE.update(tags)
            delivered.clear()
            log.warning(
                "broker: %d unacknowledged message(s) left for the next connection (%r)", len(tags), exc
            )
            raise StateChanged(f"cannot restore unacknowledged messages now: {exc!r}") from None


class _Surviving:
    """What both channels add to kombu's: Redis state replies as connection errors, no
    AttributeError from a closed connection, and restoring what an old channel could not."""

    qos: Any
    connection: Any

    def _get_pool(self, asynchronous: bool = False) -> Any:
        if self.connection.client is None:  # the kombu Connection was closed under this channel
            raise StateChanged("the broker connection is closed")
        return super()._get_pool(asynchronous)  # type: ignore[misc]

    def _brpop_read(self, **options: Any) -> Any:
        try:
            return super()._brpop_read(**options)  # type: ignore[misc]
        except exceptions.ResponseError as exc:
            raise _as_connection_error(exc) from exc

    def _brpop_start(self, timeout: Any = None) -> Any:
        try:
            return super()._brpop_start(timeout)  # type: ignore[misc]
        except exceptions.ResponseError as exc:
            raise _as_connection_error(exc) from exc

    def basic_consume(self, *args: Any, **kwargs: Any) -> Any:
        result = super().basic_consume(*args, **kwargs)  # type: ignore[misc]
        self._restore_pending()
        return result

    def _restore_pending(self) -> None:
        for tag in list(_PENDING_RESTORE):
            try:
                self.qos.restore_by_tag(tag)
            except (*kombu_redis.Transport.connection_errors, *REFUSED_WRITES) as exc:
                log.warning("broker: restoring unacknowledged messages failed, will retry: %r", exc)
                return
            _PENDING_RESTORE.discard(tag)
            log.info("broker: restored unacknowledged message %s", tag)


class Channel(_Surviving, kombu_redis.Channel):
    QoS = QoS


class Transport(kombu_redis.Transport):
    Channel = Channel
    connection_errors = (*kombu_redis.Transport.connection_errors, *REFUSED_WRITES)


class SentinelChannel(_Surviving, kombu_redis.SentinelChannel):
    QoS = QoS
    # ask Sentinel for the primary on every new socket, not only in connect() (redis-py #3874)
    connection_class = sentinel.FollowingConnection
    connection_class_ssl = sentinel.FollowingSSLConnection  # type: ignore[assignment]


class SentinelTransport(kombu_redis.SentinelTransport):
    """The twin of `Transport` behind Sentinel (`redis+sentinel://`, see celeryconfig.py)."""

    Channel = SentinelChannel
    connection_errors = (*kombu_redis.SentinelTransport.connection_errors, *REFUSED_WRITES)


#: The names Celery's `broker_transport` gets; registered as kombu aliases on import, so logs and
#: Flower show `chordflow-redis://host:port/db`.
TRANSPORT = "chordflow-redis"
SENTINEL_TRANSPORT = "chordflow-sentinel"
TRANSPORT_ALIASES.setdefault(TRANSPORT, f"{__name__}:Transport")
TRANSPORT_ALIASES.setdefault(SENTINEL_TRANSPORT, f"{__name__}:SentinelTransport")
# A `redis+sentinel://` URL with several Sentinels is one `sentinel://` URL each (kombu reads the
# Sentinels from those), and when a connection fails kombu switches to the next URL with the
# transport its scheme names: kombu's own, which has none of the above (the failover harness saw a
# worker end on kombu's restore_unacked after such a switch). The scheme names ours in this process.
TRANSPORT_ALIASES["sentinel"] = f"{__name__}:SentinelTransport"
