"""Celery configuration shared by the submitting client and the workers.

Strict on purpose: JSON only, every queue declared, a message to an unknown
queue fails loudly, acks late, a lost worker's message is requeued, prefetch 1, task events
only while Flower runs.
"""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import quote

from celery import Celery
from kombu import Queue

from orchestration.engine import sentinel
from orchestration.engine.broker import SENTINEL_TRANSPORT, TRANSPORT
from orchestration.engine.results import NO_RESULTS
from orchestration.settings import Settings

_CERT_REQS = {"required": ssl.CERT_REQUIRED, "optional": ssl.CERT_OPTIONAL, "none": ssl.CERT_NONE}


def celery_config(settings: Settings) -> dict[str, Any]:
    if not settings.redis_url:
        raise ValueError("no Redis URL configured (set CHORDFLOW_REDIS_URL)")
    config: dict[str, Any] = {
        "broker_url": settings.redis_url,
        # kombu's Redis transport, with Redis refusing writes (OOM, read-only) as a connection fault
        # that the consumer rides out, instead of an error that ends the worker (see broker.py).
        "broker_transport": TRANSPORT,
        "result_backend": settings.result_backend or NO_RESULTS,
        "task_ignore_result": True,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "event_serializer": "json",
        "task_queues": [Queue(q, routing_key=q) for q in settings.queues],
        "task_default_queue": settings.cpu_queue,
        "task_create_missing_queues": False,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "worker_prefetch_multiplier": 1,
        # No task events unless someone watches: Flower turns them on in every worker it sees
        # (`enable_events`, at its start and every 5 s); our own event stream records each state
        # change anyway. "sent" events would cost every dispatch a round trip.
        "worker_send_task_events": False,
        "task_send_sent_event": False,
        "worker_hijack_root_logger": False,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {"visibility_timeout": settings.visibility_timeout_s},
        # A broker blip must not kill running stages: the lease decides who holds a stage.
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "enable_utc": True,
    }
    if sentinel.is_sentinel(settings.redis_url):
        config.update(sentinel_broker(sentinel.parse(settings.redis_url), settings))
    if settings.redis_url.startswith("rediss"):
        config["broker_use_ssl"] = {
            "ssl_cert_reqs": _CERT_REQS.get(settings.ssl_cert_reqs, ssl.CERT_REQUIRED)
        }
        if settings.ssl_ca_certs:
            config["broker_use_ssl"]["ssl_ca_certs"] = settings.ssl_ca_certs
    return config


def sentinel_broker(parsed: sentinel.SentinelUrl, settings: Settings) -> dict[str, Any]:
    """kombu's form of a `redis+sentinel://` URL: one `sentinel://` URL per Sentinel (each with
    the data nodes' password and db), and the master's name as a transport option."""
    auth = ""
    if parsed.username or parsed.password:
        auth = f"{quote(parsed.username or '', safe='')}:{quote(parsed.password or '', safe='')}@"
    hosts = [f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in parsed.sentinels]
    return {
        "broker_url": ";".join(f"sentinel://{auth}{host}/{parsed.db}" for host in hosts),
        "broker_transport": SENTINEL_TRANSPORT,
        "broker_transport_options": {
            "visibility_timeout": settings.visibility_timeout_s,
            "master_name": parsed.master_name,
            # the Sentinels are asked without the data nodes' password, quickly
            "sentinel_kwargs": {"socket_timeout": 2.0, "socket_connect_timeout": 2.0},
        },
    }


def client_app(settings: Settings, name: str = "chordflow") -> Celery:
    """A Celery app that only sends: stage tasks are referred to by name."""
    app = Celery(name, set_as_current=False)
    app.conf.update(celery_config(settings))
    return app
