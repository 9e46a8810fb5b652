"""The Python API of a run: submit, follow, control, and read results.

client = Client(Settings.load())
run = client.submit(spec)          # RunHandle
result = run.wait(timeout=600)     # PipelineResult
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from orchestration.engine.celeryconfig import client_app
from orchestration.engine.dependencies import run_extra, unmet
from orchestration.engine.dispatch import Dispatcher, signature_of
from orchestration.engine.placement import check_placement
from orchestration.engine.store import RunStore, connect, new_run_id
from orchestration.errors import (
    DependenciesNotMet,
    RunNotFound,
    RunTimeout,
)
from orchestration.graph.resolve import RunGraph, resolve
from orchestration.language.ids import check_idempotency_key, check_run_id
from orchestration.language.spec import PipelineSpec
from orchestration.settings import Settings
from orchestration.states import RUN_FINAL, RunStatus, State
from orchestration.submit_checks import check_same_submission, check_types


@dataclass
class PipelineResult:
    run_id: str
    status: str
    success: bool
    outputs: dict[str, Any]
    stage_results: dict[str, dict[str, Any]]
    failed: list[str]
    skipped: list[str]
    duration: float
    metrics: dict[str, float]
    context: dict[str, Any] = field(default_factory=dict)


class Client:
    """Talks to one Redis: submits runs and reads them. Cheap to build; safe to share in a thread."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.store = RunStore(connect(settings), settings)
        self.app = client_app(settings)
        self.dispatcher = Dispatcher(self.app, self.store)

    def submit(
        self,
        spec: PipelineSpec,
        *,
        selection: str | None = None,
        only: bool = False,
        check_types: bool = True,
        check_capacity: bool = True,
        idempotency_key: str | None = None,
        no_cache: bool = False,
        force: bool = False,
        triggered_by: str | None = None,
        chain: str | None = None,
    ) -> RunHandle:
        """Start a run of `spec`. Its `depends_on` and `requires` are checked first: when some are not
        met, DependenciesNotMet (exit code 4) names each, unless `force` (the run record then keeps
        that it was forced, and what was not met). `triggered_by` (a run id) and `chain` (a chain id)
        are kept in the run record, for `status` and the run page."""
        if idempotency_key is not None:
            check_idempotency_key(idempotency_key)
        graph = resolve(spec, self.settings, selection, only)
        earlier = self.store.records.idempotent_run(idempotency_key) if idempotency_key else None
        if idempotency_key and earlier:
            check_same_submission(self.store, idempotency_key, earlier, graph)  # before anything is written
        if no_cache:
            graph = graph.model_copy(update={"no_cache": True})
        if check_types:
            graph = self.check_types(graph)
        check_placement(self.store, graph, refuse=check_capacity)  # before anything is written
        missing = unmet(self.store, spec)
        if missing and not force:
            if earlier is None or self.store.runs.run_status(earlier) is None:
                raise DependenciesNotMet(spec.name, missing)
            return RunHandle(self, earlier)  # submitted under this key before: the same run
        upstream = self.store.runs.run_fields([triggered_by], ["pipeline"])[0][0] if triggered_by else None
        run_id, created = self.store.runs.create_run(
            graph,
            idempotency_key=idempotency_key,
            extra=run_extra(
                spec,
                forced=force,
                unmet_lines=missing,
                triggered_by=triggered_by,
                triggered_by_pipeline=upstream,
                chain=chain,
            ),
        )
        if not created and idempotency_key:  # another submit took the key meanwhile
            check_same_submission(self.store, idempotency_key, run_id, graph)
        if created:
            self.dispatcher.dispatch(run_id, graph, [n.id for n in graph.nodes if not n.needs])
        return RunHandle(self, run_id)

    def check_types(self, graph: RunGraph) -> RunGraph:
        """Refuse types no live worker serves on the stage's queue; name types canonically; warn
        of queues no live worker serves (submit_checks.check_types)."""
        return check_types(self.store, graph)

    # -- dependencies on other pipelines -------------------------------------------------------
    def unmet_dependencies(self, spec: PipelineSpec) -> list[str]:
        """One line per `depends_on`/`requires` of `spec` not met now, with its last status and age
        (`data-daily: last success 31 h ago, older than 26 h`); empty when it may start."""
        return unmet(self.store, spec)

    def wait_for_dependencies(
        self,
        spec: PipelineSpec,
        timeout_s: float | None = None,
        poll_s: float = 5.0,
        on_wait: Callable[[list[str]], None] | None = None,
    ) -> None:
        """Block until `spec`'s dependencies are met (`on_wait` sees what is missing whenever that
        changes); DependenciesNotMet if they still are not after `timeout_s`."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        shown: list[str] = []
        while True:
            missing = unmet(self.store, spec)
            if not missing:
                return
            if on_wait is not None and missing != shown:
                on_wait(missing)
            shown = missing
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise DependenciesNotMet(spec.name, missing)
            time.sleep(poll_s if left is None else min(poll_s, left))

    def skip(
        self,
        spec: PipelineSpec,
        reason: str,
        idempotency_key: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> str:
        """Record a run of `spec` that is not started (a scheduled tick whose dependencies are not
        met): status `skipped`, with `reason`, listed by `runs`. Returns its run id (with an
        idempotency key already used, that key's run)."""
        graph = resolve(spec, self.settings)
        run_id, _ = self.store.records.create_skipped_run(
            graph, new_run_id(), reason, idempotency_key, {**run_extra(spec), **(extra or {})}
        )
        return run_id

    def origin(self, run_id: str) -> dict[str, Any]:
        """Where a run came from, as far as it says: `triggered_by` {run_id, pipeline}, `forced`
        {unmet: [...]}, `chain`, `schedule`, and `skipped` (the reason it was not started)."""
        check_run_id(run_id)
        names = ["triggered_by", "triggered_by_pipeline", "forced", "unmet", "chain", "schedule", "reason"]
        got = dict(zip(names, self.store.runs.run_fields([run_id], names)[0]))
        out: dict[str, Any] = {}
        if got["triggered_by"]:
            out["triggered_by"] = {"run_id": got["triggered_by"], "pipeline": got["triggered_by_pipeline"]}
        if got["forced"]:
            out["forced"] = {"unmet": json.loads(got["unmet"] or "[]")}
        for name in ("chain", "schedule"):
            if got[name]:
                out[name] = got[name]
        if got["reason"]:
            out[RunStatus.SKIPPED] = got["reason"]
        return out

    def handle(self, run_id: str) -> RunHandle:
        check_run_id(run_id)
        self.store.runs.run(run_id)  # raises RunNotFound
        return RunHandle(self, run_id)

    # -- control ------------------------------------------------------------------------------
    def cancel(self, run_id: str) -> str:
        check_run_id(run_id)
        self.store.runs.run(run_id)
        verdict, revoke = self.store.transitions.control(run_id, "cancel")
        if verdict == "ok":
            if revoke:
                self.app.control.revoke(revoke, terminate=True, signal="SIGTERM")
            # run_complete (status cancelled) went to the hooks outbox with the cancel itself:
            # the workers' hook senders deliver it, to their Python hooks too.
            self.store.runs.expire_run(run_id, self.store.runs.graph(run_id))
            return RunStatus.CANCELLED
        return f"not cancelled: {_the_run(revoke[0])}"

    def pause(self, run_id: str) -> str:
        check_run_id(run_id)
        self.store.runs.run(run_id)
        verdict, detail = self.store.transitions.control(run_id, "pause")
        return RunStatus.PAUSED if verdict == "ok" else f"not paused: {_the_run(detail[0])}"

    def resume(self, run_id: str) -> str:
        check_run_id(run_id)
        self.store.runs.run(run_id)
        verdict, parked = self.store.transitions.control(run_id, "resume")
        if verdict != "ok":
            return f"not resumed: {_the_run(parked[0])}"
        self.dispatcher.send(signature_of(p, self.store) for p in parked)
        # A fan-out made ready while the run was paused was not started (it waits in the outbox):
        # start it now rather than when the reaper finds it.
        graph = self.store.runs.graph(run_id)
        states = self.store.runs.states(run_id)
        waiting = [n.id for n in graph.nodes if n.fans_out and states.get(n.id) == State.QUEUED]
        if waiting:
            self.dispatcher.dispatch(run_id, graph, waiting)
        return "resumed"

    def retry(self, run_id: str) -> str:
        """Run a failed run again from the point of failure, under the same id."""
        check_run_id(run_id)
        self.store.runs.run(run_id)
        graph = self.store.runs.graph(run_id)
        verdict, detail = self.store.transitions.reopen(run_id, graph)
        if verdict != "ok":
            return f"not retried: {_the_run(detail[0])}; only a run that failed or was cancelled is retried"
        self.dispatcher.dispatch(run_id, graph, detail)
        return State.RETRYING

    # -- reading ------------------------------------------------------------------------------
    def status(self, run_id: str) -> dict[str, Any]:
        """The run and every stage: state, attempts, host, queue, times (epoch s), error, output."""
        check_run_id(run_id)
        record = self.store.runs.run(run_id)
        graph = self.store.runs.graph(run_id)
        ids = [n.id for n in graph.nodes]
        states = self.store.runs.states(run_id)
        details = self.store.runs.stage_details(run_id, ids)
        outputs = self.store.runs.outputs(run_id)
        stages = {}
        for sid in ids:
            d = details.get(sid, {})
            stage: dict[str, Any] = {
                "state": states.get(sid, State.PENDING),
                "type": graph.node(sid).type,
                "attempts": int(d.get("attempt", 0)),
                "host": d.get("host"),
                "queue": graph.node(sid).queue,
                "started_at": _num(d.get("started_at")),
                "finished_at": _num(d.get("finished_at")),
                "error": json.loads(d["error"]) if d.get("error") else None,
                "output": outputs.get(sid),
            }
            if d.get("history"):
                stage["history"] = json.loads(d["history"])
            if "items_total" in d:
                stage["items_total"] = int(d["items_total"])
                stage["items_done"] = int(d.get("items_done", 0))
            if d.get("progress_attempt") == d.get("attempt") and (progress := _progress(d)) is not None:
                stage["progress"] = progress  # what the stage reported with ctx.progress(done, total)
            stages[sid] = stage
        return {
            "run_id": run_id,
            "pipeline": record.get("pipeline"),
            "version": record.get("version"),
            "status": record.get("status"),
            "created_at": _num(record.get("created_at")),
            "finished_at": _num(record.get("finished_at")),
            "failed_stage": record.get("failed_stage"),
            "stages": stages,
            "metrics": self.store.runs.metrics(run_id),
            "context": self.store.runs.context(run_id),
        }

    def follow(
        self,
        run_id: str,
        timeout_s: float | None = None,
        on_event: Callable[[dict[str, str]], None] | None = None,
        on_tick: Callable[[], None] | None = None,
        tick_s: float = 1.0,
    ) -> str:
        """Block until the run ends; returns its final status.

        Reads the run's event stream to its real end: an end that a later `retry` reopened is read
        past, so `on_event` sees every event from the first, across retries. `on_tick` is called
        after every read, at least every `tick_s` seconds (a screen that redraws on a timer)."""
        check_run_id(run_id)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        after = "0-0"
        status = self.store.runs.run(run_id).get("status", "")
        if status in RUN_FINAL and on_event is None:
            return status
        last_run_state = ""  # the state of the last run event read
        batch = 1000
        while True:
            wait_ms = max(10, int(tick_s * 1000))
            if deadline is not None:
                wait_ms = max(1, min(wait_ms, int((deadline - time.monotonic()) * 1000)))
            # without a callback only the run's own changes matter: their stream wakes this client
            # once at the end, not once per stage event
            events = self.store.runs.events(
                run_id, after, block_ms=wait_ms, count=batch, run_only=on_event is None
            )
            for eid, event in events:
                after = eid
                if on_event:
                    on_event(event)
                if event.get("kind") == "run":
                    last_run_state = event.get("state", "")
            if on_tick:
                on_tick()
            # Read up to the stream's end (as of now), the last run event ends the run only if the
            # record agrees: a `retry` reopens the record and appends a running event to the stream at once
            # (one script), so a final event then a reopened record means more events are coming.
            # A run whose stream expired (or was trimmed) ends by its record.
            if len(events) < batch and (last_run_state in RUN_FINAL or not events):
                status = self.store.runs.run(run_id).get("status", "")
                ended = status in RUN_FINAL and (last_run_state == status or not events)
                if ended and not self.store.runs.events(run_id, after, count=1, run_only=on_event is None):
                    return status
            if deadline is not None and time.monotonic() >= deadline:
                raise RunTimeout(run_id, timeout_s, status)

    def result(self, run_id: str) -> PipelineResult:
        check_run_id(run_id)
        s = self.status(run_id)
        stages = s["stages"]
        started = s["created_at"] or 0.0
        ended = s["finished_at"] or time.time()
        return PipelineResult(
            run_id=run_id,
            status=s["status"],
            success=s["status"] == RunStatus.SUCCEEDED,
            outputs={
                sid: st["output"]
                for sid, st in stages.items()
                if st["state"] in (State.SUCCEEDED, State.FALLBACK)
            },
            stage_results=stages,
            failed=[
                sid for sid, st in stages.items() if st["state"] in (State.FAILED, State.UPSTREAM_FAILED)
            ],
            skipped=[sid for sid, st in stages.items() if st["state"] == State.SKIPPED],
            duration=ended - started,
            metrics=s["metrics"],
            context=s["context"],
        )

    def runs(self, limit: int = 20, pipeline: str | None = None) -> Iterator[dict[str, str]]:
        for run_id in self.store.runs.recent_runs(limit, pipeline):
            try:
                record = self.store.runs.run(run_id)
            except RunNotFound:  # expired since it was listed
                continue
            yield record


class RunHandle:
    def __init__(self, client: Client, run_id: str):
        self.client, self.run_id = client, run_id

    def status(self) -> dict[str, Any]:
        return self.client.status(self.run_id)

    def wait(self, timeout: float | None = None) -> PipelineResult:
        self.client.follow(self.run_id, timeout)
        return self.client.result(self.run_id)

    def cancel(self) -> str:
        return self.client.cancel(self.run_id)

    def __repr__(self) -> str:
        return f"RunHandle({self.run_id!r})"


def _the_run(status: str) -> str:
    """`the run succeeded`, `the run was cancelled`, `the run is running`: why a control did
    nothing, in words."""
    if status in (RunStatus.SUCCEEDED, RunStatus.FAILED):
        return f"the run {status}"
    if status in (RunStatus.CANCELLED, RunStatus.SKIPPED):
        return f"the run was {status}"
    return f"the run is {status}"


def _progress(record: Mapping[str, str]) -> dict[str, float] | None:
    """{done, total} of a stage record's `progress_done`/`progress_total`, or None."""
    try:
        done, total = float(record["progress_done"]), float(record["progress_total"])
    except (KeyError, TypeError, ValueError):
        return None
    return {"done": done, "total": total}


def _num(value: str | None) -> float | None:
    return float(value) if value not in (None, "") else None


__all__ = ["Client", "PipelineResult", "RunHandle"]
