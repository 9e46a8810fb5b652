"""kombu's Redis transport, with Redis refusing writes counted as a connection fault.

At `maxmemory` (with `noeviction`, the setting we recommend) or on a read-only
replica, Redis refuses kombu's own writes: the acknowledgement of a finished
stage (a MULTI of ZREM + HDEL, all refused under OOM since Redis 7) and the
bookkeeping of a received message. Celery's consumer catches only the
transport's *connection* errors around those calls; anything else ends the
worker ("Unrecoverable error"), and the message is then redelivered to the next
worker, which ends too. Counted as connection errors, they are logged, the
consumer reconnects with its usual backoff, and the worker process stays up;
our leases and the reaper take care of the stage (its attempt is fenced).
"""

from __future__ import annotations

from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import redis as kombu_redis
from redis import exceptions

#: Redis answered but will not write.
REFUSED_WRITES = (exceptions.OutOfMemoryError, exceptions.ReadOnlyError, exceptions.ExecAbortError)


class Transport(kombu_redis.Transport):
    connection_errors = (*kombu_redis.Transport.connection_errors, *REFUSED_WRITES)


#: The name Celery's `broker_transport` gets; registered as a kombu alias on import, so logs and
#: Flower show `chordflow-redis://host:port/db`.
TRANSPORT = "chordflow-redis"
TRANSPORT_ALIASES.setdefault(TRANSPORT, f"{__name__}:Transport")
