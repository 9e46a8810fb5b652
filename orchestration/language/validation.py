"""Turn a pipeline document into a PipelineSpec, reporting every problem at once.

Field checks come from the pydantic models; the checks across stages here run
even when some stages failed their field checks, on what can be read of them,
so one file run shows the cycle, the missing dependency and the bad duration
together, each with its stage id and line.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from orchestration.errors import InvalidPipeline, Problem
from orchestration.language import dag as graph
from orchestration.language import expressions
from orchestration.language.ids import is_stage_id
from orchestration.language.loader import Document, gc_paused, load_document, load_text
from orchestration.language.spec import Limits, PipelineSpec, Stage, shown
from orchestration.settings import Settings

LineOf = Callable[..., "int | None"]
_FIELDS = set(Stage.model_fields) | {
    "continue_on_error",
    "parameters",
    "condition",
    "timeout_seconds",
    "max_retries",
    "retry_delay_seconds",
}


def load_pipeline(
    path: str | Path,
    overrides: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    settings: Settings | None = None,
) -> PipelineSpec:
    """Read, interpolate and validate a pipeline file; raise InvalidPipeline with every problem.

    The limits are `settings`' (docs/pipeline-file.md, "Limits"); without settings, the environment's."""
    settings = settings or Settings()
    document = load_document(path, overrides=overrides, env=env, limits=Limits.from_settings(settings))
    with gc_paused():
        return validate_document(document, settings)


def load_pipeline_text(
    text: str,
    source: str = "<string>",
    overrides: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    settings: Settings | None = None,
) -> PipelineSpec:
    settings = settings or Settings()
    document = load_text(text, source, overrides=overrides, env=env, limits=Limits.from_settings(settings))
    return validate_document(document, settings)


def validate_document(doc: Document, settings: Settings | None = None) -> PipelineSpec:
    return validate_data(doc.data, doc.line_of, doc.source, settings)


def validate_data(
    data: Mapping[str, Any],
    line_of: LineOf | None = None,
    source: str | None = None,
    settings: Settings | None = None,
    limits: Limits | None = None,
) -> PipelineSpec:
    """Validate already-parsed data (a file's or a builder's) within `limits` (default: `settings`')."""
    line_of = line_of or (lambda *path: None)
    settings = settings or Settings()
    limits = limits or Limits.from_settings(settings)
    if not isinstance(data, Mapping):
        raise InvalidPipeline(
            [Problem("a pipeline must be a mapping (name: ..., stages: ...)", source=source)]
        )
    problems = _size_problems(data, line_of, source, limits)
    if problems and len(_raw_stages(data)) > limits.max_stages:
        raise InvalidPipeline(problems, source)  # fail fast: validating every stage would take long
    problems.extend(_value_problems(data, line_of, source, limits))
    spec: PipelineSpec | None = None
    try:
        spec = PipelineSpec.model_validate(data, context={"limits": limits})
    except ValidationError as exc:
        problems.extend(_field_problems(exc, data, line_of, source))
    views = [_StageView.of(i, raw, spec) for i, raw in enumerate(_raw_stages(data))]
    problems.extend(_cross_stage_problems(views, data, spec, line_of, source, settings, limits))
    if problems or spec is None:
        if not problems:  # pragma: no cover (every refusal names its field; a last line of defence)
            problems.append(Problem("the pipeline is not valid", source=source))
        raise InvalidPipeline(sorted(problems, key=lambda p: (p.line or 0, p.message)), source)
    return spec


def _size_problems(
    data: Mapping[str, Any], line_of: LineOf, source: str | None, limits: Limits
) -> list[Problem]:
    """Stages and matrix instances over the limits, counted on the raw data before anything is expanded."""
    problems: list[Problem] = []
    raw_stages = _raw_stages(data)
    total = 0
    for i, raw in enumerate(raw_stages):
        matrix = raw.get("matrix") if isinstance(raw, dict) else None
        instances = 1
        if isinstance(matrix, dict):
            for values in matrix.values():
                if isinstance(values, list):
                    instances *= max(len(values), 1)
                    if instances > limits.max_matrix_instances:
                        break  # the product of many axes can be astronomically large: stop counting
            if instances > limits.max_matrix_instances:
                sizes = " x ".join(str(len(v)) for v in matrix.values() if isinstance(v, list))
                sid = _named(raw.get("id"))
                problems.append(
                    Problem(
                        f"matrix: {sizes} makes over {limits.max_matrix_instances:,} instances, the limit "
                        "(max_matrix_instances); split the stage or use fewer values",
                        sid,
                        line_of("stages", i, "matrix"),
                        source,
                    )
                )
                instances = 1
        total += instances
    if total > limits.max_stages:
        what = (
            f"{len(raw_stages):,} stages"
            if total == len(raw_stages)
            else f"{total:,} stages once matrices are expanded"
        )
        problems.append(
            Problem(
                f"the pipeline has {what}; the limit is {limits.max_stages:,} (max_stages)",
                None,
                line_of("stages"),
                source,
            )
        )
    return problems


def _value_problems(
    data: Mapping[str, Any], line_of: LineOf, source: str | None, limits: Limits
) -> list[Problem]:
    """Integers beyond max_integer and NaN or infinite numbers, anywhere in the data."""
    problems: list[Problem] = []
    bound = limits.max_integer
    stack: list[tuple[Any, tuple[Any, ...]]] = [(data, ())]
    while stack:
        value, path = stack.pop()
        if isinstance(value, dict):
            stack.extend((v, path + (k,)) for k, v in value.items() if not isinstance(v, str))
            continue
        if isinstance(value, list):
            stack.extend((v, path + (i,)) for i, v in enumerate(value) if not isinstance(v, str))
            continue
        if isinstance(value, bool):
            continue
        if isinstance(value, int) and not -bound <= value <= bound:
            message = f"{shown(value)} is larger than the limit of {bound:,} (max_integer)"
        elif isinstance(value, float) and not math.isfinite(value):
            message = f"{value!r} is not allowed: numbers must be finite (no NaN or infinity)"
        else:
            continue
        problems.append(_problem_at(data, path, message, line_of, source))
    return problems


def _problem_at(
    data: Mapping[str, Any], path: tuple[Any, ...], message: str, line_of: LineOf, source: str | None
) -> Problem:
    stage_id, where = None, path
    if len(path) >= 2 and path[0] == "stages" and isinstance(path[1], int):
        raw = _raw_stages(data)[path[1]]
        stage_id = _named(raw.get("id")) if isinstance(raw, dict) else None
        where = path[2:]
    text = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in where).lstrip(".")
    return Problem(f"{text}: {message}" if text else message, stage_id, line_of(*path), source)


def _named(stage_id: Any) -> str | None:
    """A stage id to name a problem by: only a valid one (an id with a newline would break the line)."""
    return stage_id if isinstance(stage_id, str) and is_stage_id(stage_id) else None


def _raw_stages(data: Mapping[str, Any]) -> list[Any]:
    stages = data.get("stages") if isinstance(data, Mapping) else None
    return stages if isinstance(stages, list) else []


def _field_problems(
    exc: ValidationError, data: Mapping[str, Any], line_of: LineOf, source: str | None
) -> list[Problem]:
    problems: list[Problem] = []
    errors = exc.errors(include_url=False)
    fields_with_deeper_errors = {
        e["loc"][:3] for e in errors if len(e["loc"]) > 3 and e["type"] != "string_type"
    }
    stage_errors = any(len(e["loc"]) > 1 and e["loc"][0] == "stages" for e in errors)
    for err in errors:
        loc = tuple(err["loc"])
        # An invalid stage is dropped before the length check; "at least 1 item" would be noise.
        if loc == ("stages",) and err["type"] == "too_short" and stage_errors:
            continue
        # A union field (retry: NAME | {policy}) reports one error per branch; when the
        # input was a mapping, the "should be a string" branch is noise.
        if err["type"] == "string_type" and loc[:3] in fields_with_deeper_errors:
            continue
        path = _real_path(data, loc)
        stage_id = None
        if len(path) >= 2 and path[0] == "stages":
            raw = _raw_stages(data)[path[1]] if isinstance(path[1], int) else None
            stage_id = _named(raw.get("id")) if isinstance(raw, dict) else None
            path_in_stage = path[2:]
        else:
            path_in_stage = path
        problems.append(Problem(_describe(err, path_in_stage), stage_id, line_of(*path), source))
    return problems


def _real_path(data: Any, loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """The part of a pydantic error location that exists in the data (drops union branch tags)."""
    path: list[Any] = []
    node = data
    for part in loc:
        if (
            isinstance(node, Mapping)
            and part in node
            or isinstance(node, list)
            and isinstance(part, int)
            and 0 <= part < len(node)
        ):
            node = node[part]
        elif isinstance(node, Mapping) and isinstance(part, str) and part not in node and part[:1].islower():
            path.append(part)  # an unknown or missing key: name it
            break
        else:
            continue
        path.append(part)
    return tuple(path)


def _describe(err: Mapping[str, Any], path: tuple[Any, ...]) -> str:
    where = ".".join(str(p) for p in path)
    msg = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        key = str(path[-1]) if path else "?"
        close = difflib.get_close_matches(key, _FIELDS | set(PipelineSpec.model_fields), n=1)
        return f"unknown key '{key}'" + (f" (did you mean '{close[0]}'?)" if close else "")
    if err["type"] == "missing":
        return f"'{where}' is required"
    if err["type"] == "string_type":  # true, null, a list or a mapping where text is expected
        msg = f"{shown(err.get('input'))} is not text; quote it if it is meant as text"
    return f"{where}: {msg}" if where else msg


@dataclass
class _StageView:
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
    def of(cls, index: int, raw: Any, spec: PipelineSpec | None) -> _StageView:
        if spec is not None:
            s = spec.stages[index]
            return cls(index, s.id, list(s.needs), s.order, s.enabled, s.for_each, s.when, s.retry, s)
        if not isinstance(raw, dict):
            return cls(index, None)
        needs = raw.get("needs", [])
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


def effective_needs(views: Iterable[Any]) -> dict[str, list[str]]:
    """Each enabled stage's dependencies, with order-based stages chained by `order`.

    A stage with `order` and no `needs` depends on every stage at the nearest lower
    `order` value; stages at the same order run in parallel. A disabled stage is
    dropped and its dependents inherit its dependencies, so the order it imposed stays.
    """
    views = [v for v in views if v.id is not None]
    orders = sorted({v.order for v in views if v.order is not None and v.enabled})
    by_order: dict[int, list[str]] = {}
    for v in views:
        if v.order is not None and v.enabled:
            by_order.setdefault(v.order, []).append(v.id)
    raw: dict[str, list[str]] = {}
    for v in views:
        if v.needs or v.order is None:
            raw[v.id] = list(v.needs)
        else:
            pos = orders.index(v.order) if v.order in orders else sum(o < v.order for o in orders)
            raw[v.id] = list(by_order[orders[pos - 1]]) if pos > 0 else []
    disabled = {v.id for v in views if not v.enabled}
    if not disabled:
        return raw

    def bypass(stage_id: str, seen: set[str]) -> list[str]:
        out: list[str] = []
        for need in raw.get(stage_id, []):
            if need in disabled:
                if need not in seen:
                    seen.add(need)
                    out.extend(bypass(need, seen))
            else:
                out.append(need)
        return out

    return {v.id: list(dict.fromkeys(bypass(v.id, set()))) for v in views if v.enabled}


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


def _cross_stage_problems(
    views: list[_StageView],
    data: Mapping[str, Any],
    spec: PipelineSpec | None,
    line_of: LineOf,
    source: str | None,
    settings: Settings,
    limits: Limits,
) -> list[Problem]:
    problems: list[Problem] = []

    def add(message: str, view: _StageView | None, *path: Any) -> None:
        line = line_of("stages", view.index, *path) if view is not None else line_of(*path)
        problems.append(Problem(message, _named(view.id) if view else None, line, source))

    first_seen: dict[str, _StageView] = {}
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
    for v in views:
        if v.when is not None:
            for message in expressions.check(v.when, variables, id_set, max_integer=limits.max_integer):
                add(message, v, "when" if "when" in (_raw_stages(data)[v.index] or {}) else "condition")

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
    return problems


def _queue_problems(
    spec: PipelineSpec, line_of: LineOf, source: str | None, settings: Settings
) -> list[Problem]:
    from orchestration.language.routing import queue_for

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
