"""May a pipeline start? Its `depends_on` and `requires`, read from the run store; and how fresh
each pipeline and asset is.

- `depends_on: {pipeline: U, max_age}` is met when U's last *finished* run (succeeded, failed or
  cancelled: a run still going, or one that was skipped, does not count) succeeded, and finished
  within `max_age`: the dependency's own, else U's registered `max_age`, else any time ago.
- `requires: {asset: X, max_age}` is met when a successful run provided X within `max_age`: the
  requirement's own, else the smallest `max_age` of the registered pipelines providing X, else
  any time ago.

A pipeline's runs are read from its newest run records (right at once, the moment a run ends) and
from the kept record of run ends (`records.record_run_end`, written by the hook sender) for runs
whose records have expired. Times are Redis's clock, which every machine agrees on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from orchestration.engine.records import SKIPPED
from orchestration.states import RunStatus

if TYPE_CHECKING:
    from orchestration.engine.store import RunStore
    from orchestration.language.spec import PipelineSpec

log = logging.getLogger("chordflow.pipelines")
SCAN = 100  # newest runs of a pipeline read for its last end
FINISHED = (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED)
_KEY_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


@dataclass(frozen=True)
class RunEnd:
    run_id: str
    status: str
    at: float  # epoch s: when it finished (for a run not finished: when it was submitted)
    pipeline: str = ""


@dataclass
class PipelineState:
    """What a pipeline's runs say: its newest run, last finished run, last success, and the
    newest success that provided each of its assets."""

    name: str
    last_run: RunEnd | None = None
    last_reason: str | None = None  # why the newest run was skipped
    last_finished: RunEnd | None = None
    last_success: RunEnd | None = None
    provided: dict[str, RunEnd] = field(default_factory=dict)


@dataclass(frozen=True)
class Registered:
    """A pipeline of the registry (`chordflow pipelines add`, `schedule add`)."""

    name: str
    spec: PipelineSpec
    source: str | None = None
    added_at: float | None = None
    origin: str = ""


# -- reading ----------------------------------------------------------------------------------


def registry(store: RunStore) -> dict[str, Registered]:
    """The registered pipelines by name (an entry that no longer validates is logged and left out)."""
    found: dict[str, Registered] = {}
    entries = sorted(store.records.registered_pipelines().items())
    if not entries:
        return found
    # The file's models load here, when some pipeline is registered: a worker's hook sender calls
    # this on every run end and stale check, and most fleets register none.
    from orchestration.language.spec import PipelineSpec

    for name, entry in entries:
        try:
            spec = PipelineSpec.model_validate(entry.get("spec") or {})
        except ValidationError as exc:
            log.error("registered pipeline %r does not validate any more; ignored: %s", name, exc)
            continue
        found[name] = Registered(
            name, spec, entry.get("source"), entry.get("added_at"), entry.get("origin", "")
        )
    return found


def pipeline_state(store: RunStore, name: str) -> PipelineState:
    """`name`'s runs: its newest `SCAN` run records, and the kept record of its run ends."""
    ids = [str(i) for i in store.runs.recent_runs(SCAN, name)]
    rows = store.runs.run_fields(ids, ["status", "created_at", "finished_at", "provides", "reason"])
    state = PipelineState(name)
    for run_id, (status, created, finished, provides, reason) in zip(ids, rows):
        if status is None:  # expired
            continue
        if state.last_run is None:
            state.last_run = RunEnd(run_id, status, _number(created), name)
            state.last_reason = reason
        if status not in FINISHED or not finished:
            continue
        end = RunEnd(run_id, status, _number(finished), name)
        state.last_finished = _later(state.last_finished, end)
        if status == RunStatus.SUCCEEDED:
            state.last_success = _later(state.last_success, end)
            for asset in _names(provides):
                state.provided[asset] = _later(state.provided.get(asset), end) or end
    kept = store.records.pipeline_state(name)
    if kept.get("last_finished_at"):
        end = RunEnd(
            kept["last_finished_id"], kept["last_finished_status"], _number(kept["last_finished_at"]), name
        )
        state.last_finished = _later(state.last_finished, end)
    if kept.get("last_success_at"):
        end = RunEnd(kept["last_success_id"], RunStatus.SUCCEEDED, _number(kept["last_success_at"]), name)
        state.last_success = _later(state.last_success, end)
    return state


def last_provided(
    store: RunStore, asset: str, registered: Mapping[str, Registered], kept: Mapping[str, Any]
) -> RunEnd | None:
    """The newest successful run that provided `asset`: the kept asset record (`kept`, from
    `store.records.asset_records()`), or a newer run of a registered pipeline providing it."""
    best = None
    record = kept.get(asset)
    if isinstance(record, Mapping) and record.get("at") is not None:
        best = RunEnd(
            str(record.get("run_id")), RunStatus.SUCCEEDED, _number(record["at"]), str(record.get("pipeline"))
        )
    for name in providers(asset, registered):
        best = _later(best, pipeline_state(store, name).provided.get(asset))
    return best


# -- the rules ----------------------------------------------------------------------------------


def providers(asset: str, registered: Mapping[str, Registered]) -> list[str]:
    return [name for name, r in registered.items() if asset in r.spec.provides]


def dependency_limit(
    pipeline: str, max_age: float | None, registered: Mapping[str, Registered]
) -> float | None:
    """How old a dependency's last success may be: its own `max_age`, else the upstream's registered one."""
    if max_age is not None:
        return max_age
    upstream = registered.get(pipeline)
    return upstream.spec.max_age if upstream is not None else None


def asset_limit(asset: str, max_age: float | None, registered: Mapping[str, Registered]) -> float | None:
    """How old an asset may be: the requirement's `max_age`, else the smallest of its providers'."""
    if max_age is not None:
        return max_age
    ages = [r.spec.max_age for r in registered.values() if asset in r.spec.provides and r.spec.max_age]
    return min(ages) if ages else None


def dependency_problem(state: PipelineState, limit: float | None, now: float) -> str | None:
    """Why `state`'s pipeline does not satisfy a dependency on it (None: it does)."""
    last = state.last_finished
    if last is None:
        newest = state.last_run
        if newest is not None and newest.status == SKIPPED:
            return f"never ran: its last run was skipped {ago(now - newest.at)} ({state.last_reason})"
        if newest is not None:
            return f"has not finished a run yet (one is {newest.status}, submitted {ago(now - newest.at)})"
        return "never ran"
    if last.status != RunStatus.SUCCEEDED:
        success = state.last_success
        since = f"last success {ago(now - success.at)}" if success is not None else "it never succeeded"
        return f"last run {last.status} {ago(now - last.at)} ({last.run_id}); {since}"
    if limit is not None and now - last.at > limit:
        return f"last success {ago(now - last.at)}, older than {span(limit)}"
    return None


def asset_problem(provided: RunEnd | None, limit: float | None, makers: list[str], now: float) -> str | None:
    """Why an asset does not satisfy a requirement (None: it does)."""
    if provided is None:
        who = f"provided by {', '.join(makers)}" if makers else "no registered pipeline provides it"
        return f"never provided ({who})"
    if limit is not None and now - provided.at > limit:
        return (
            f"last provided {ago(now - provided.at)} by {provided.pipeline} ({provided.run_id}), "
            f"older than {span(limit)}"
        )
    return None


def unmet(
    store: RunStore, spec: PipelineSpec, registered: Mapping[str, Registered] | None = None
) -> list[str]:
    """One line per dependency of `spec` that is not met, naming it, its last status and age:
    `data-daily: last success 31 h ago, older than 26 h`. Empty when it may start."""
    if not spec.depends_on and not spec.requires:
        return []
    registered = registry(store) if registered is None else registered
    now = store.runs.server_time()
    lines = []
    for dep in spec.depends_on:
        limit = dependency_limit(dep.pipeline, dep.max_age, registered)
        why = dependency_problem(pipeline_state(store, dep.pipeline), limit, now)
        if why is not None:
            lines.append(f"{dep.pipeline}: {why}")
    kept = store.records.asset_records() if spec.requires else {}
    for req in spec.requires:
        provided = last_provided(store, req.asset, registered, kept)
        limit = asset_limit(req.asset, req.max_age, registered)
        why = asset_problem(provided, limit, providers(req.asset, registered), now)
        if why is not None:
            lines.append(f"asset {req.asset}: {why}")
    return lines


def freshness_limit(name: str, registered: Mapping[str, Registered]) -> float | None:
    """How old a pipeline's last success may be: the smallest of its own `max_age` and the `max_age`
    of every registered pipeline's `depends_on` naming it (None: no limit)."""
    ages = [registered[name].spec.max_age] if name in registered else []
    ages += [d.max_age for r in registered.values() for d in r.spec.depends_on if d.pipeline == name]
    known = [a for a in ages if a]
    return min(known) if known else None


def asset_freshness_limit(asset: str, registered: Mapping[str, Registered]) -> float | None:
    """How old an asset may be: the smallest of its providers' `max_age` and the `max_age` of every
    registered `requires` naming it (None: no limit)."""
    ages = [asset_limit(asset, None, registered)]
    ages += [q.max_age for r in registered.values() for q in r.spec.requires if q.asset == asset]
    known = [a for a in ages if a]
    return min(known) if known else None


# -- what a run records ---------------------------------------------------------------------------


def run_extra(
    spec: PipelineSpec,
    *,
    forced: bool = False,
    unmet_lines: Iterable[str] = (),
    triggered_by: str | None = None,
    triggered_by_pipeline: str | None = None,
    chain: str | None = None,
) -> dict[str, Any]:
    """The fields a run record keeps of where the run came from and what it provides."""
    extra: dict[str, Any] = {}
    if spec.max_age:
        extra["max_age_s"] = spec.max_age
    if spec.provides:
        extra["provides"] = json.dumps(list(spec.provides))
    if forced:
        extra["forced"] = 1
        extra["unmet"] = json.dumps(list(unmet_lines))
    if triggered_by:
        extra["triggered_by"] = triggered_by
        extra["triggered_by_pipeline"] = triggered_by_pipeline or ""
    if chain:
        extra["chain"] = chain
    return extra


def trigger_key(pipeline: str, upstream_run: str) -> str:
    """The idempotency key of the run of `pipeline` a success of `upstream_run` triggers: one run
    per successful upstream run, however often the run's end is delivered."""
    return f"trigger:{key_name(pipeline)}:{upstream_run}"


def key_name(pipeline: str) -> str:
    """`pipeline` as a part of an idempotency key: itself when it fits, else a digest of it."""
    if _KEY_SAFE.fullmatch(pipeline):
        return pipeline
    return "h" + hashlib.sha256(pipeline.encode()).hexdigest()[:24]


# -- text ----------------------------------------------------------------------------------------


def span(seconds: float) -> str:
    """A duration for a person, whole units: `45 s`, `12 m`, `31 h`, `3 d` (`1 h`, not `60 m`)."""
    s = max(0.0, seconds)
    if s >= 3 * 86400:
        return f"{int(s // 86400)} d"
    if s >= 2 * 3600 or (s >= 3600 and s % 3600 == 0):
        return f"{int(s // 3600)} h"
    if s >= 120 or (s >= 60 and s % 60 == 0):
        return f"{int(s // 60)} m"
    return f"{int(s)} s"


def ago(seconds: float) -> str:
    return f"{span(seconds)} ago"


def _later(a: RunEnd | None, b: RunEnd | None) -> RunEnd | None:
    if a is None:
        return b
    if b is None:
        return a
    return b if b.at > a.at else a


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def _names(raw: str | None) -> list[str]:
    try:
        value = json.loads(raw) if raw else []
    except ValueError:
        return []
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []
