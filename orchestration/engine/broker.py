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

A stage's message is not recorded in kombu's unacknowledged hash. kombu's Redis transport
writes every message it delivers to that hash (MULTI, ZADD, HSET, EXEC, before the worker sees
the message) and deletes it at the acknowledgement (MULTI, ZREM, HDEL, EXEC): eight of a stage's
commands and a round trip before it starts. For a stage the record is the run store's: from its
`begin` on, the attempt's lease (the reaper sends it again when the lease lapses); before that,
the anti-entropy sweep (antientropy.py), which sends again a queued stage whose message is
nowhere for a grace period, as it did for a message a dead worker left in that hash (kombu would
only put it back after the one-hour visibility timeout). So a stage's message is held in the
worker's memory only: acknowledged there, and put back on its queue from there when it is
rejected with requeue or its channel closes with it unacknowledged (a warm shutdown, a broken
connection). Any other message (a schedule's tick, a plain Celery task) keeps kombu's record.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from kombu.transport import TRANSPORT_ALIASES, virtual
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

#: delivery tags an old channel could not restore; the next channel restores them (a stage's
#: message from the (payload, exchange, routing key) kept here, any other from kombu's hash)
_PENDING_RESTORE: dict[str, tuple[Any, str, str] | None] = {}

#: the stage messages this process holds unacknowledged, by delivery tag: their queue
_HELD: dict[str, str] = {}
STAGE_TASK_PREFIX = "stage."  # registry.task_name


def held() -> dict[str, int]:
    """{queue: stage messages this process holds, unacknowledged} (its heartbeat reports them)."""
    return dict(Counter(dict(_HELD).values()))  # a copy first: acks may come from other threads


def _is_stage(message: Any) -> bool:
    return str((message.headers or {}).get("task") or "").startswith(STAGE_TASK_PREFIX)


def _as_connection_error(exc: BaseException) -> BaseException:
    if isinstance(exc, exceptions.ResponseError) and str(exc).split(" ", 1)[0].upper() in _STATE_REPLIES:
        return StateChanged(str(exc))
    return exc


class QoS(kombu_redis.QoS):
    """kombu's, with a stage's message held in memory only (see the module's docstring)."""

    def append(self, message: Any, delivery_tag: str) -> None:
        if not _is_stage(message):
            return super().append(message, delivery_tag)
        _HELD[delivery_tag] = str(message.delivery_info.get("routing_key") or "")
        virtual.QoS.append(self, message, delivery_tag)

    def ack(self, delivery_tag: str) -> None:
        if _HELD.pop(delivery_tag, None) is None:
            return super().ack(delivery_tag)
        virtual.QoS.ack(self, delivery_tag)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        if delivery_tag not in _HELD:
            return super().reject(delivery_tag, requeue)
        if requeue:
            self.restore_by_tag(delivery_tag, leftmost=True)
        _HELD.pop(delivery_tag, None)
        virtual.QoS.ack(self, delivery_tag)

    def restore_by_tag(self, tag: Any, client: Any = None, leftmost: bool = False) -> None:
        if tag not in _HELD:
            return super().restore_by_tag(tag, client, leftmost)
        delivered: Any = self._delivered
        message = delivered.get(tag)
        if message is not None:
            _put_back(self.channel, _kept(message), client, leftmost)
        _HELD.pop(tag, None)

    def restore_unacked(self, client: Any = None) -> Any:
        try:
            return super().restore_unacked(client)
        except (AttributeError, *kombu_redis.Transport.connection_errors, *REFUSED_WRITES) as exc:
            delivered: Any = self._delivered
            tags = {str(tag) for tag in delivered}
            for tag in tags:
                message = delivered.get(tag) if tag in _HELD else None
                if message is not None:
                    _PENDING_RESTORE[tag] = _kept(message)
                else:
                    _PENDING_RESTORE.setdefault(tag, None)
                _HELD.pop(tag, None)
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
        for tag, kept in list(_PENDING_RESTORE.items()):
            try:
                if kept is None:
                    self.qos.restore_by_tag(tag)
                else:
                    _put_back(self, kept)
            except (*kombu_redis.Transport.connection_errors, *REFUSED_WRITES) as exc:
                log.warning("broker: restoring unacknowledged messages failed, will retry: %r", exc)
                return
            _PENDING_RESTORE.pop(tag, None)
            log.info("broker: restored unacknowledged message %s", tag)


def _kept(message: Any) -> tuple[Any, str, str]:
    """What puts a held stage message back: its payload, exchange and routing key."""
    info = message.delivery_info
    return message._raw, info["exchange"], info["routing_key"]


def _put_back(channel: Any, kept: tuple[Any, str, str], client: Any = None, leftmost: bool = False) -> None:
    """Put a held stage message (payload, exchange, routing key) back on its queue, as kombu
    restores one from its unacknowledged hash (marked redelivered)."""
    payload, exchange, routing_key = kept
    with channel.conn_or_acquire(client) as redis_client:
        pipe = redis_client.pipeline()
        channel._do_restore_message(payload, exchange, routing_key, pipe, leftmost)
        pipe.execute()


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
