"""Stage messages as the broker stores them, for the commit script to enqueue.

A commit that makes stages ready enqueues their messages itself (`finish.lua` LPUSHes them
onto their queues), so a commit and the sending of what it made ready are one atomic step:
no message is lost between them and none needs the outbox or a Python round trip.

The text is what Celery (message protocol 2) and kombu's Redis transport write for
`stage_signature(...).apply_async()`: a JSON envelope with headers and properties, the
body `[args, kwargs, embed]` as JSON text. Two differences, both read the same way by the
consumer: the body is not base64-encoded (no `body_encoding`, which kombu then takes as
is), and the task id is made here. A fan-out's items are sent from a template: the scripts
replace ITEM with the item's index (in the body, the id and the delivery tag), and COUNT
with the number of consecutive items one message carries (a chunk, see workers/execution.py).
"""

from __future__ import annotations

import json
import os
import socket
import uuid

from orchestration.engine.compiler import HARD_LIMIT_GRACE_S, SOFT_LIMIT_GRACE_S
from orchestration.engine.registry import task_name
from orchestration.engine.stage_message import StageMessage
from orchestration.graph.resolve import Node

ITEM = "@@ITEM@@"  # replaced by the item's index in a template (no JSON text contains it)
COUNT = "@@COUNT@@"  # replaced by the number of items of a chunk
_EMBED = json.dumps(
    {"callbacks": None, "errbacks": None, "chain": None, "chord": None}, separators=(",", ":")
)
_ORIGIN = f"gen{os.getpid()}@{socket.gethostname()}"


def stage_message(message: StageMessage, node: Node) -> str:
    """The broker's text of the message that runs `message` (one attempt of `node`, or of one of
    its items)."""
    return _envelope(node, message.args_json(), str(uuid.uuid4()), repr(message.args))


def item_template(run_id: str, node: Node, chunked: bool = False) -> str:
    """The broker's text of any item's message of fan-out `node` (attempt 1): ITEM stands for the
    item's index and, `chunked`, COUNT for the number of consecutive items the message carries."""
    count = COUNT if chunked else None
    args = StageMessage.template_json(run_id, node.id, ITEM, count)
    shown = f"({run_id!r}, {node.id!r}, 1, {ITEM}" + (f", {COUNT})" if chunked else ")")
    return _envelope(node, args, f"{uuid.uuid4()}.{ITEM}", shown)


def _envelope(node: Node, args_json: str, task_id: str, shown: str) -> str:
    body = f"[{args_json},{{}},{_EMBED}]"
    timelimit = (
        [node.timeout_s + HARD_LIMIT_GRACE_S, node.timeout_s + SOFT_LIMIT_GRACE_S]
        if node.timeout_s
        else [None, None]
    )
    envelope = {
        "body": body,
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            "lang": "py",
            "task": task_name(node.type),
            "id": task_id,
            "shadow": None,
            "eta": None,
            "expires": None,
            "group": None,
            "group_index": None,
            "retries": 0,
            "timelimit": timelimit,
            "root_id": task_id,
            "parent_id": None,
            "argsrepr": shown,
            "kwargsrepr": "{}",
            "origin": _ORIGIN,
            "ignore_result": None,  # as Celery sends a task it has not registered (the task's own is True)
            "replaced_task_nesting": 0,
            "stamped_headers": None,
            "stamps": {},
        },
        "properties": {
            "correlation_id": task_id,
            "reply_to": "",
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": node.queue},
            "priority": 0,
            "delivery_tag": task_id,
        },
    }
    return json.dumps(envelope, separators=(",", ":"))


__all__ = ["COUNT", "ITEM", "item_template", "stage_message"]
