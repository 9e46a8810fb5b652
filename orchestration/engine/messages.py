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
from orchestration.graph.resolve import Node

ITEM = "@@ITEM@@"  # replaced by the item's index in a template (no JSON text contains it)
COUNT = "@@COUNT@@"  # replaced by the number of items of a chunk
_EMBED = json.dumps(
    {"callbacks": None, "errbacks": None, "chain": None, "chord": None}, separators=(",", ":")
)
_ORIGIN = f"gen{os.getpid()}@{socket.gethostname()}"


def stage_message(
    run_id: str, node: Node, attempt: int = 1, item: int | str | None = None, count: int | str = 1
) -> str:
    """The broker's text of the message that runs one attempt of `node` (or of one of its items;
    `item=ITEM` gives the template of any item, and `count=COUNT` of any chunk of items)."""
    task_id = str(uuid.uuid4())
    if item == ITEM:
        task_id = f"{task_id}.{ITEM}"
    head = json.dumps([run_id, node.id, attempt], separators=(",", ":"))[:-1]
    index = "null" if item is None else str(item)
    chunk = "" if count == 1 else f",{count}"
    body = f"[{head},{index}{chunk}],{{}},{_EMBED}]"
    shown = f"({run_id!r}, {node.id!r}, {attempt}, {item}{chunk.replace(',', ', ')})"
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
            "ignore_result": True,
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


__all__ = ["COUNT", "ITEM", "stage_message"]
