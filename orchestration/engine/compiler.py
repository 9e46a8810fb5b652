"""The graph → Celery messages compiler: pure, no I/O.

Each message carries a `StageMessage` (`(run_id, stage_id, attempt, item)`) and small options
(queue, time limits), never the pipeline or upstream outputs, so a message's
size does not grow with the pipeline. Dependencies are not encoded in the
canvas: they are counter joins in Redis (`lua/finish.lua`), so a stage starts
as soon as its own parents are done and no canvas is ever nested.
"""

from __future__ import annotations

from celery import Signature, signature

from orchestration.engine.registry import task_name
from orchestration.engine.stage_message import StageMessage
from orchestration.graph.resolve import Node

SOFT_LIMIT_GRACE_S = 1.0
HARD_LIMIT_GRACE_S = 5.0


def stage_signature(message: StageMessage, node: Node, countdown: float | None = None) -> Signature:
    """The Celery message that runs `message`: one attempt of `node`, or of one of its items."""
    options: dict[str, object] = {"queue": node.queue}
    if node.timeout_s:
        # The stage enforces its own timeout (ctx.timeout_s; shell kills its command at it).
        # Celery's soft limit, a second later, raises inside a stage that ignored it; the
        # hard limit kills the process.
        options["soft_time_limit"] = node.timeout_s + SOFT_LIMIT_GRACE_S
        options["time_limit"] = node.timeout_s + HARD_LIMIT_GRACE_S
    if countdown:
        options["countdown"] = countdown
    return signature(task_name(node.type), args=message.args, options=options, immutable=True)


def first_signature(run_id: str, node: Node) -> Signature:
    """The message of a stage's first attempt."""
    return stage_signature(StageMessage(run_id, node.id), node)


def item_signatures(run_id: str, node: Node, indexes: range | list[int]) -> list[Signature]:
    return [stage_signature(StageMessage(run_id, node.id, 1, i), node) for i in indexes]
