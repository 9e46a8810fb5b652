"""Checks across stages: ids, needs and cycles, for_each, conditions, retry policy names, queues.

They run even when some stages failed their field checks, on what can be read of them
(`StageView`), so one run shows the cycle, the missing dependency and the bad duration together.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from orchestration.errors import Problem
from orchestration.language import dag as graph
from orchestration.language import expressions
from orchestration.language.field_checks import LineOf, named, raw_stages
from orchestration.language.ids import is_stage_id
from orchestration.language.limits import Limits
from orchestration.language.needs import effective_needs
from orchestration.language.rates import fill_key, key_params, settings_limits, undeclared_pool
from orchestration.language.routing import queue_for
from orchestration.language.spec import PipelineSpec, Stage
from orchestration.settings import Settings


@dataclass
class StageView:
    """What cross-stage checks need of a stage, read leniently when its fields are invalid."""

    index: int
    id: str | None
    needs: list[str] = field(default_factory=list)
    order: int | None = None
    enabled: bool = True
    for_each: str | None = None
    when: str | None = None
    retry: Any = None
    stage: Stage | None = None

    @classmethod
    def of(cls, index: int, raw: Any, spec: PipelineSpec | None) -> StageView:
        if spec is not None:
            s = spec.stages[index]
            return cls(index, s.id, list(s.needs), s.order, s.enabled, s.for_each, s.when, s.retry, s)
        if not isinstance(raw, dict):
            return cls(index, None)
        needs = raw.get("needs", raw.get("inputs", []))
        needs = (
            [needs]
            if isinstance(needs, str)
            else [n for n in needs if isinstance(n, str)]
            if isinstance(needs, list)
            else []
        )
        order = raw.get("order")
        return cls(
            index,
            raw["id"] if isinstance(raw.get("id"), str) else None,
            needs,
            order if isinstance(order, int) and not isinstance(order, bool) else None,
            raw.get("enabled", True) is not False,
            raw.get("for_each") if isinstance(raw.get("for_each"), str) else None,
            _first_str(raw, "when", "condition"),
            raw.get("retry"),
        )


def _first_str(raw: Mapping[str, Any], *keys: str) -> str | None:
    for key in keys:
        if isinstance(raw.get(key), str):
            return raw[key]
    return None


def _reaches(deps: Mapping[str, list[str]], start: str, target: str) -> bool:
    """Whether `target` is upstream of `start`: a direct need, else a search that stops when found."""
    if target in deps.get(start, ()):
        return True
    seen, stack = {start}, list(deps.get(start, ()))
    while stack:
        sid = stack.pop()
        if sid == target:
            return True
        if sid not in seen:
            seen.add(sid)
            stack.extend(deps.get(sid, ()))
    return False


def cross_stage_problems(
    views: list[StageView],
    data: Mapping[str, Any],
    spec: PipelineSpec | None,
    line_of: LineOf,
    source: str | None,
    settings: Settings,
    limits: Limits,
) -> list[Problem]:
    problems: list[Problem] = []

    def add(message: str, view: StageView | None, *path: Any) -> None:
        line = line_of("stages", view.index, *path) if view is not None else line_of(*path)
        problems.append(Problem(message, named(view.id) if view else None, line, source))

    first_seen: dict[str, StageView] = {}
    for v in views:
        if v.id is None:
            continue
        if v.id in first_seen:
            first_line = line_of("stages", first_seen[v.id].index)
            where = f"line {first_line}" if first_line else f"stage #{first_seen[v.id].index + 1}"
            add(f"duplicate stage id (first defined at {where})", v, "id")
        else:
            first_seen[v.id] = v
    ids = list(first_seen)
    for v in views:
        for j, need in enumerate(v.needs):
            if need == v.id:
                add("needs itself", v, "needs", j)
            elif need not in first_seen:
                close = difflib.get_close_matches(need, ids, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                add(f"needs '{need}', which is not a stage in this pipeline{hint}", v, "needs", j)

    deps = {
        sid: [n for n in needs if n in first_seen and n != sid]
        for sid, needs in effective_needs(first_seen.values()).items()
    }
    for cycle in graph.find_cycles(deps):
        add(f"dependency cycle: {graph.format_cycle(cycle)}", first_seen[cycle[0]], "needs")

    for v in views:
        if v.for_each is not None and v.id in deps and not _reaches(deps, v.id, v.for_each):
            add(
                f"for_each '{v.for_each}' names no upstream stage; it must be one of the stages "
                f"this stage needs (directly or through them)",
                v,
                "for_each",
            )

    variables = set(data["variables"]) if isinstance(data.get("variables"), Mapping) else set()
    id_set = set(ids)
    checked: dict[str, list[str]] = {}  # a file repeats its few conditions: each is parsed once
    for v in views:
        if v.when is not None:
            if v.when not in checked:
                checked[v.when] = expressions.check(v.when, variables, id_set, max_integer=limits.max_integer)
            for message in checked[v.when]:
                add(message, v, "when" if "when" in (raw_stages(data)[v.index] or {}) else "condition")

    policies: Mapping[str, Any] = (
        data["retry_policies"] if isinstance(data.get("retry_policies"), Mapping) else {}
    )
    defaults: Mapping[str, Any] = data["defaults"] if isinstance(data.get("defaults"), Mapping) else {}
    if isinstance(defaults.get("retry"), str) and defaults["retry"] not in policies:
        add(
            f"defaults.retry names policy '{defaults['retry']}', which retry_policies does not define",
            None,
            "defaults",
            "retry",
        )
    for v in views:
        if isinstance(v.retry, str) and v.retry not in policies:
            known = ", ".join(policies) or "none are defined"
            add(f"retry names policy '{v.retry}', which retry_policies does not define ({known})", v, "retry")

    if spec is not None:
        problems.extend(_queue_problems(spec, line_of, source, settings))
    problems.extend(_limit_problems(data, line_of, source, settings))
    return problems


def _limit_problems(
    data: Mapping[str, Any], line_of: LineOf, source: str | None, settings: Settings
) -> list[Problem]:
    """Pools that no one declares, concurrency keys that can't be filled in, and bad limit settings
    (read on the raw data, so they show beside the field problems)."""
    problems: list[Problem] = []
    try:
        settings_limits(settings)
    except ValueError as exc:
        problems.append(Problem(str(exc), source=source))
    declared: Mapping[str, Any] = data["pools"] if isinstance(data.get("pools"), Mapping) else {}
    for i, raw in enumerate(raw_stages(data)):
        if not isinstance(raw, Mapping):
            continue
        pool, key = raw.get("pool"), raw.get("concurrency_key")
        if isinstance(pool, str) and is_stage_id(pool) and pool not in {**declared, **settings.pools}:
            problems.append(
                Problem(undeclared_pool(pool), named(raw.get("id")), line_of("stages", i, "pool"), source)
            )
        params = raw.get("params", raw.get("parameters", {}))
        if isinstance(key, str) and key and isinstance(params, Mapping):
            matrix: Mapping[str, Any] = raw["matrix"] if isinstance(raw.get("matrix"), Mapping) else {}
            axes = [name for name in key_params(key) if name not in params and name in matrix]
            try:
                if axes:
                    raise ValueError(
                        f"concurrency_key {key!r} reads ${{params.{axes[0]}}}, a matrix axis: a key is "
                        "one for the whole stage, and matrix values are not its params"
                    )
                fill_key(key, params)
            except ValueError as exc:
                problems.append(
                    Problem(str(exc), named(raw.get("id")), line_of("stages", i, "concurrency_key"), source)
                )
    return problems


def _queue_problems(
    spec: PipelineSpec, line_of: LineOf, source: str | None, settings: Settings
) -> list[Problem]:
    problems: list[Problem] = []
    served = set(settings.queues)
    for i, stage in enumerate(spec.stages):
        queue = queue_for(
            stage.resources or spec.defaults.resources, stage.queue, spec.defaults.queue, settings
        )
        if queue not in served:
            why = (
                f"queue '{queue}'"
                if stage.queue or not stage.resources
                else f"resources {stage.resources.model_dump(exclude_defaults=True)} (queue '{queue}')"
            )
            problems.append(
                Problem(
                    f"{why} is not served by any configured queue ({', '.join(sorted(served))}); "
                    "set CHORDFLOW_QUEUES or change the stage",
                    stage.id,
                    line_of("stages", i),
                    source,
                )
            )
    return problems
