"""The broker text a commit enqueues itself (engine/messages.py) is what Celery writes.

A commit LPUSHes the messages of the stages it makes ready, built by `stage_message`, instead of
sending them through Celery; the workers must not tell the two apart. Here Celery (message
protocol 2, kombu's Redis transport, our configuration) sends the same stage message to a real
redis-server, and the text it left in the queue is compared field by field with ours: only what
is unique per message (ids, the sending process) and the body's transfer encoding may differ.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import pytest
import redis

from orchestration.engine.celeryconfig import client_app
from orchestration.engine.compiler import stage_signature
from orchestration.engine.messages import COUNT, ITEM, item_template, stage_message
from orchestration.engine.stage_message import StageMessage
from orchestration.fleet.embedded import RedisServer
from orchestration.graph.resolve import resolve
from orchestration.language.validation import validate_data
from orchestration.settings import Settings

UNIQUE = {"id", "root_id", "origin"}  # per message, or per sending process
UNIQUE_PROPERTIES = {"correlation_id", "delivery_tag"}


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with RedisServer() as s:
        yield s


def _node(**extra):
    spec = validate_data({"name": "wire", "stages": [{"id": "a", "uses": "noop", "queue": "cpu", **extra}]})
    return resolve(spec).node("a")


def _sent_by_celery(server: RedisServer, message: StageMessage, node) -> dict:
    r = redis.Redis.from_url(server.url, decode_responses=True)
    r.delete(node.queue)
    app = client_app(Settings(redis_url=server.url))
    try:
        with app.producer_or_acquire() as producer:  # as the dispatcher sends (engine/dispatch.py)
            stage_signature(message, node).apply_async(producer=producer)
    finally:
        app.close()
    (text,) = r.lrange(node.queue, 0, -1)
    return json.loads(text)


def _compare(celery: dict, ours: dict) -> None:
    celery_body = celery.pop("body")
    encoding = celery["properties"].pop("body_encoding")
    assert encoding == "base64"  # kombu's transfer encoding; ours is the JSON text as is
    assert json.loads(base64.b64decode(celery_body)) == json.loads(ours.pop("body"))
    for field in UNIQUE:
        assert celery["headers"].pop(field) and ours["headers"].pop(field)
    for field in UNIQUE_PROPERTIES:
        assert celery["properties"].pop(field) and ours["properties"].pop(field)
    # the sending app's id, for RPC results: stage tasks keep none (ignore_result), so ours is empty
    assert isinstance(celery["properties"].pop("reply_to"), str)
    assert ours["properties"].pop("reply_to") == ""
    assert celery["headers"] == ours["headers"]
    assert celery["properties"] == ours["properties"]
    assert celery == ours  # content-type, content-encoding, nothing else


@pytest.mark.parametrize("extra", [{}, {"timeout": 30}])
@pytest.mark.parametrize("message", [StageMessage("r1", "a"), StageMessage("r1", "a", 3, 7)])
def test_a_stage_message_is_the_envelope_celery_writes(server, message, extra):
    node = _node(**extra)
    _compare(_sent_by_celery(server, message, node), json.loads(stage_message(message, node)))


def test_an_item_template_filled_in_is_the_envelope_celery_writes(server):
    node = _node()
    ours = json.loads(item_template("r1", node, chunked=True).replace(ITEM, "4").replace(COUNT, "8"))
    _compare(_sent_by_celery(server, StageMessage("r1", "a", 1, 4, 8), node), ours)
