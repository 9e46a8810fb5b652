"""Problems of single values, each located by stage and line in the raw data.

Counted on the raw data before the models see it: the pipeline's size (stages, matrix
instances) and numbers beyond the limits. Then pydantic's field errors, turned into problem
lines that name the key as the file wrote it.
"""

from __future__ import annotations

import difflib
import functools
import math
import typing
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from orchestration.errors import Problem
from orchestration.language.fields import shown
from orchestration.language.ids import is_stage_id
from orchestration.language.limits import Limits
from orchestration.language.spec import PipelineSpec, Stage

LineOf = Callable[..., "int | None"]
_FIELDS = set(Stage.model_fields) | {
    "continue_on_error",
    "parameters",
    "condition",
    "timeout_seconds",
    "max_retries",
    "retry_delay_seconds",
    "inputs",
}


def size_problems(
    data: Mapping[str, Any], line_of: LineOf, source: str | None, limits: Limits
) -> list[Problem]:
    """Stages and matrix instances over the limits, counted on the raw data before anything is expanded."""
    problems: list[Problem] = []
    stages = raw_stages(data)
    total = 0
    for i, raw in enumerate(stages):
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
                sid = named(raw.get("id"))
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
            f"{len(stages):,} stages"
            if total == len(stages)
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


def value_problems(
    data: Mapping[str, Any], line_of: LineOf, source: str | None, limits: Limits
) -> list[Problem]:
    """Integers beyond max_integer and NaN or infinite numbers, anywhere in the data."""
    problems: list[Problem] = []
    bound = limits.max_integer
    if _all_numbers_fine(data, bound):
        return problems
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
        problems.append(problem_at(data, path, message, line_of, source))
    return problems


def _all_numbers_fine(data: Mapping[str, Any], bound: int) -> bool:
    """True if no number in `data` is past `bound` or not finite; False if one is, or if a value is
    of a kind (a subclass, a tuple) this quick walk leaves to value_problems' own, which also
    notes the path of each value (most files have nothing to report)."""
    stack: list[Any] = [data.values()] if type(data) is dict else []
    if not stack:
        return False
    while stack:
        for value in stack.pop():
            kind = type(value)
            if kind is str or kind is bool or value is None:
                continue
            if kind is int:
                if not -bound <= value <= bound:
                    return False
            elif kind is float:
                if not math.isfinite(value):
                    return False
            elif kind is dict:
                stack.append(value.values())
            elif kind is list:
                stack.append(value)
            else:
                return False
    return True


def problem_at(
    data: Mapping[str, Any], path: tuple[Any, ...], message: str, line_of: LineOf, source: str | None
) -> Problem:
    stage_id, where = None, path
    if len(path) >= 2 and path[0] == "stages" and isinstance(path[1], int):
        raw = raw_stages(data)[path[1]]
        stage_id = named(raw.get("id")) if isinstance(raw, dict) else None
        where = path[2:]
    text = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in where).lstrip(".")
    return Problem(f"{text}: {message}" if text else message, stage_id, line_of(*path), source)


def named(stage_id: Any) -> str | None:
    """A stage id to name a problem by: only a valid one (an id with a newline would break the line)."""
    return stage_id if isinstance(stage_id, str) and is_stage_id(stage_id) else None


def raw_stages(data: Mapping[str, Any]) -> list[Any]:
    stages = data.get("stages") if isinstance(data, Mapping) else None
    return stages if isinstance(stages, list) else []


def field_problems(
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
            raw = raw_stages(data)[path[1]] if isinstance(path[1], int) else None
            stage_id = named(raw.get("id")) if isinstance(raw, dict) else None
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


@functools.cache
def _nested_fields() -> dict[str, set[str]]:
    """Key of a pipeline or stage field holding a model (`resources`, `retry`, `cache`, ...) ->
    that model's keys: an unknown key under `resources` is matched against `gpu`, `memory_gb`,
    not against the stage's keys."""
    found: dict[str, set[str]] = {}
    for model in (PipelineSpec, Stage):
        for name, info in model.model_fields.items():
            for kind in _types_in(info.annotation):
                if isinstance(kind, type) and issubclass(kind, BaseModel) and kind is not Stage:
                    found.setdefault(info.alias or name, set()).update(
                        f.alias or n for n, f in kind.model_fields.items()
                    )
    return found


def _types_in(annotation: Any) -> list[Any]:
    """The classes an annotation names (through Optional, unions, lists and dicts)."""
    args = typing.get_args(annotation)
    return [annotation] if not args else [t for a in args for t in _types_in(a)]


def _describe(err: Mapping[str, Any], path: tuple[Any, ...]) -> str:
    where = ".".join(str(p) for p in path)
    msg = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        key = str(path[-1]) if path else "?"
        nested = _nested_fields()
        parent = next((p for p in reversed(path[:-1]) if isinstance(p, str) and p in nested), None)
        known = nested[parent] if parent is not None else _FIELDS | set(PipelineSpec.model_fields)
        close = difflib.get_close_matches(key, known, n=1)
        return f"unknown key '{key}'" + (f" (did you mean '{close[0]}'?)" if close else "")
    if err["type"] == "missing":
        return f"'{where}' is required"
    if err["type"] == "string_type":  # true, null, a list or a mapping where text is expected
        msg = f"{shown(err.get('input'))} is not text; quote it if it is meant as text"
    return f"{where}: {msg}" if where else msg
