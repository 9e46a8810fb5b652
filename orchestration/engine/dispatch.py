"""Sending ready stages, starting fan-outs, and acting on what a commit decided.

Used by the submitter (the roots) and by every worker (the children its commit
made ready): there is no long-lived coordinator. Everything ready at one
moment goes out through one producer connection.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from celery import Celery, Signature

from orchestration.engine.commit import CommitRequest
from orchestration.engine.compiler import first_signature, item_signatures, stage_signature
from orchestration.engine.limits import gate_for
from orchestration.engine.messages import item_template, stage_message
from orchestration.engine.replies import Commit, CommitVerdict
from orchestration.engine.stage_message import StageMessage
from orchestration.engine.store import RunStore
from orchestration.graph.resolve import Node, RunGraph
from orchestration.states import RunStatus, State

log = logging.getLogger("chordflow.dispatch")


class Dispatcher:
    def __init__(self, app: Celery, store: RunStore):
        self.app = app
        self.store = store

    # -- graph helpers --------------------------------------------------------------------------
    def children(self, graph: RunGraph, stage_id: str) -> list[str]:
        return graph.children.get(stage_id, [])

    def descendants(self, graph: RunGraph, stage_id: str) -> list[str]:
        children = graph.children
        seen: set[str] = set()
        stack = list(children.get(stage_id, []))
        while stack:
            sid = stack.pop()
            if sid not in seen:
                seen.add(sid)
                stack.extend(children.get(sid, []))
        return [n.id for n in graph.nodes if n.id in seen]

    def blocked_by(self, graph: RunGraph, stage_id: str, outcome: State) -> list[str]:
        """The stages a failure marks upstream_failed (only a critical failure without fail_fast
        needs the list; everything else is decided in the commit script)."""
        node = graph.node(stage_id)
        if outcome is not State.FAILED or not node.critical or graph.fail_fast:
            return []
        return self.descendants(graph, stage_id)

    # -- what a commit enqueues itself (engine/messages.py) -------------------------------------
    def messages(
        self, run_id: str, graph: RunGraph, stage_ids: Iterable[str]
    ) -> dict[str, tuple[str, str, bool]]:
        """{stage: (queue, broker text, front)} of the stages among `stage_ids` a commit can enqueue
        when it makes them ready: every one but a fan-out, which is started here (`_start_fanout`).
        A stage on the critical path (by the stages' estimates) goes to the front of its queue, so
        short side branches ready at the same moment do not delay the whole run."""
        found = {}
        for sid in stage_ids:
            node = graph.node(sid)
            if not node.fans_out:
                found[sid] = (
                    node.queue,
                    stage_message(StageMessage(run_id, sid), node),
                    node.on_critical_path,
                )
        return found

    def next_item_template(self, run_id: str, node: Node) -> tuple[str, str] | None:
        """(queue, template) of the next item of a windowed fan-out, for its items' commits."""
        return (node.queue, item_template(run_id, node)) if node.max_concurrency else None

    def plan(self, req: CommitRequest, enqueue: bool = True) -> CommitRequest:
        """`req` with what its commit may make ready, from the graph: the children it counts down,
        the stages a critical failure blocks and, with `enqueue`, the messages the script enqueues
        itself (every ready child but a fan-out; a windowed fan-out's next item)."""
        run_id, graph, stage_id = req.run_id, req.graph, req.stage_id
        children = self.children(graph, stage_id)
        return replace(
            req,
            children=children,
            descendants=self.blocked_by(graph, stage_id, req.outcome),
            messages=self.messages(run_id, graph, children) if enqueue else {},
            next_message=self.next_item_template(run_id, graph.node(stage_id))
            if enqueue and req.item is not None
            else None,
        )

    # -- sending ------------------------------------------------------------------------------
    def send(self, signatures: Iterable[Signature]) -> None:
        signatures = list(signatures)
        if not signatures:
            return
        with self.app.producer_or_acquire() as producer:
            for sig in signatures:
                sig.apply_async(producer=producer)

    def dispatch(self, run_id: str, graph: RunGraph, stage_ids: Iterable[str]) -> None:
        """Send every stage in `stage_ids` (all 'queued'), and whatever they make ready in turn."""
        pending = list(stage_ids)
        sent: list[str] = []
        while pending:
            batch: list[Signature] = []
            more: list[str] = []
            for sid in pending:
                node = graph.node(sid)
                if node.fans_out:
                    started = self._start_fanout(run_id, graph, node)
                    if started is None:
                        continue  # the run is paused: it stays in the outbox (see Reaper.unsent)
                    sigs, ready = started
                    batch += sigs
                    more += ready
                else:
                    batch.append(first_signature(run_id, node))
                sent.append(sid)
            self.send(batch)
            pending = more
        # Only now, with every message handed to the broker, is the outbox entry done;
        # a dispatcher that dies before this line is covered by the reaper.
        self.store.outbox.sent(run_id, sent)

    def advance(
        self, run_id: str, graph: RunGraph, commit: Commit, stage_id: str, send_ready: bool = True
    ) -> None:
        """Act on a commit: send what it made ready, revoke what fail-fast stopped, close the run."""
        if commit.revoke:
            self.app.control.revoke(commit.revoke, terminate=True, signal="SIGTERM")
            # stopped by SIGTERM, they never commit: give back their slots now, not in a lease
            self.store.capacity.release_run(run_id, graph)
        if commit.next_item is not None:
            message = StageMessage(run_id, stage_id, 1, commit.next_item)
            self.send([stage_signature(message, graph.node(stage_id))])
        if commit.ready and send_ready:
            self.dispatch(run_id, graph, commit.ready)
        if commit.finalized:
            self.store.runs.expire_run(run_id, graph)

    # -- fan-out --------------------------------------------------------------------------------
    def _start_fanout(
        self, run_id: str, graph: RunGraph, node: Node
    ) -> tuple[list[Signature], list[str]] | None:
        """Decide the items of a fan-out stage and send the first window of them.

        Returns (item messages, stages made ready when the stage ends at once: skipped,
        empty, or failing because its for_each input is not a list), or None when the run is
        paused: then the fan-out starts once it is resumed.
        """
        outputs = self.store.runs.outputs(run_id, node.reads)
        if node.when:
            from orchestration.language import expressions  # only a stage with a condition loads it
        if node.when and not expressions.reads_item(node.when):
            try:
                go = expressions.evaluate(
                    node.when,
                    variables=graph.variables,
                    outputs=outputs,
                    context=self.store.runs.context(run_id),
                    max_steps=self.store.settings.condition_max_steps,
                )
            except ValueError as exc:
                return [], self._close(
                    run_id, graph, node, State.FAILED, error=_error("ConditionError", str(exc))
                )
            if not go:
                return [], self._close(run_id, graph, node, State.SKIPPED, output="null")
        # A condition that reads `item` or `matrix` is decided per item, by each item's attempt.
        if node.matrix is not None:
            total = len(node.matrix)
        else:
            items = outputs.get(node.for_each or "")
            if items is None:
                items = []
            if not isinstance(items, list):
                return [], self._close(
                    run_id,
                    graph,
                    node,
                    State.FAILED,
                    error=_error(
                        "FanOutError",
                        f"for_each '{node.for_each}' must output a list; it output {type(items).__name__}",
                    ),
                )
            total = len(items)
            cap = self.store.settings.max_fanout_items
            if total > cap:
                return [], self._close(
                    run_id,
                    graph,
                    node,
                    State.FAILED,
                    error=_error(
                        "FanOutError",
                        f"for_each '{node.for_each}' output {total:,} items; the limit is {cap:,} "
                        f"(CHORDFLOW_MAX_FANOUT_ITEMS)",
                    ),
                )
        if total == 0:
            return [], self._close(run_id, graph, node, State.SUCCEEDED, output="[]")
        window = min(total, node.max_concurrency or total)
        chunk = chunk_size(total, node, self.store.settings.fanout_chunk, graph)
        template = item_template(run_id, node, chunked=chunk > 1)
        first = self.store.transitions.start_fanout(
            run_id, node.id, total, window, node.queue, template, chunk
        )
        if first is None and self.store.runs.run_status(run_id) == RunStatus.PAUSED:
            return None
        if first is None or first.enqueued:
            return [], []
        if not first.items:  # a retried run kept every item: the stage ends from their outputs
            kept = self.store.runs.items(run_id, node.id)
            output = "[" + ",".join(kept.get(i, {}).get("output") or "null" for i in range(total)) + "]"
            return [], self._close(run_id, graph, node, State.SUCCEEDED, output=output)
        return item_signatures(run_id, node, first.items), []

    def fail_stage(self, run_id: str, stage_id: str, error: dict[str, Any]) -> bool:
        """Fail a stage that no attempt holds (decided outside a worker's attempt), keep its error,
        and advance the run. False if the stage had already ended or an attempt holds it."""
        graph = self.store.runs.graph(run_id)
        commit = self._settle(run_id, graph, graph.node(stage_id), State.FAILED, error=error)
        if commit.verdict is not CommitVerdict.OK:
            return False
        if commit.ready:
            self.dispatch(run_id, graph, commit.ready)
        return True

    def _close(
        self,
        run_id: str,
        graph: RunGraph,
        node: Node,
        outcome: State,
        output: str = "",
        error: dict[str, Any] | None = None,
    ) -> list[str]:
        """End a stage decided here (not by an attempt); returns the stages it made ready, for the
        caller to send."""
        commit = self._settle(run_id, graph, node, outcome, output, error)
        return commit.ready if commit.verdict is CommitVerdict.OK else []

    def _settle(
        self,
        run_id: str,
        graph: RunGraph,
        node: Node,
        outcome: State,
        output: str = "",
        error: dict[str, Any] | None = None,
    ) -> Commit:
        # decided outside a worker, which alone knows its Python hooks: always announce the run's end
        request = CommitRequest(
            run_id, graph, node.id, outcome, output_json=output, error=error, run_hook=True
        )
        commit = self.store.transitions.finish(self.plan(request, enqueue=False))
        if commit.verdict is CommitVerdict.OK:
            self.advance(run_id, graph, commit, node.id, send_ready=False)  # the caller sends them
        return commit


def _error(kind: str, message: str) -> dict[str, Any]:
    return {"type": kind, "message": message, "retryable": False}


def chunk_size(total: int, node: Node, most: int, graph: RunGraph | None = None) -> int:
    """How many consecutive items one message of a fan-out carries: up to `most`
    (CHORDFLOW_FANOUT_CHUNK), and few enough that the items still spread over 16 messages or more.
    A windowed fan-out (max_concurrency) sends one item per message: its window counts items; so
    does a stage with limits (limits.py): each item is admitted, or waits, on its own."""
    if node.max_concurrency or most <= 1:
        return 1
    if graph is not None and gate_for(graph, node, "") is not None:
        return 1
    return max(1, min(most, total // 16))


def signature_of(payload_text: str, store: RunStore) -> Signature:
    """The Celery message of a stored stage message (the delay set's, the parked set's)."""
    message = StageMessage.from_payload(payload_text)
    return stage_signature(message, store.runs.graph(message.run_id).node(message.stage_id))
