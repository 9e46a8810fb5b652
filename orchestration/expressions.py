"""Stage conditions (`when:`): parsed at load time, evaluated safely at run time.

An expression sees `variables`, `outputs` (upstream outputs by stage id),
`context` (the run's shared context), `matrix` and `item`, plus the literals
`true/false/null`. Evaluation is simpleeval's: no imports, no dunder access,
no calls but a short allow-list. `check()` rejects at load time what would
fail at run time for a reason the author can fix now: a syntax error, an
unknown name, a construct that is not allowed, an `outputs.X` that names no
stage, a `variables.X` that is not defined.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from typing import Any

from simpleeval import EvalWithCompoundTypes

NAMES = ("variables", "outputs", "context", "matrix", "item")
LITERALS = {"true": True, "false": False, "null": None, "True": True, "False": False, "None": None}
FUNCTIONS = {
    "len": len, "min": min, "max": max, "abs": abs, "round": round,
    "int": int, "float": float, "str": str, "bool": bool, "any": any, "all": all,
}
MAX_LENGTH = 2000

_ALLOWED_NODES = (
    ast.Expression, ast.BoolOp, ast.And, ast.Or, ast.UnaryOp, ast.Not, ast.USub, ast.UAdd,
    ast.BinOp, ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod,
    ast.Compare, ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.In, ast.NotIn, ast.Is, ast.IsNot,
    ast.Name, ast.Load, ast.Constant, ast.Attribute, ast.Subscript, ast.Call, ast.IfExp,
    ast.List, ast.Tuple, ast.Set, ast.Dict,
)


class Namespace:
    """A read-only mapping whose keys read as attributes; a missing key reads as None.

    Plain dicts would answer `outputs.items` with the dict method, not a stage's output.
    """

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[str, Any]):
        self._data = data

    def __getattr__(self, name: str) -> Any:
        return _wrap(self._data.get(name))

    def __getitem__(self, key: str) -> Any:
        return _wrap(self._data.get(key))

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __len__(self) -> int:
        return len(self._data)

    def __bool__(self) -> bool:
        return bool(self._data)

    def __eq__(self, other: object) -> bool:
        return self._data == (other._data if isinstance(other, Namespace) else other)

    def __repr__(self) -> str:
        return f"Namespace({self._data!r})"


def _wrap(value: Any) -> Any:
    return Namespace(value) if isinstance(value, Mapping) else value


def check(expression: str, variables: Iterable[str], stage_ids: Iterable[str]) -> list[str]:
    """Every reason `expression` can't be used as a condition; [] if it is fine."""
    if not isinstance(expression, str) or not expression.strip():
        return ["the condition is empty"]
    if len(expression) > MAX_LENGTH:
        return [f"the condition is {len(expression)} characters long; the limit is {MAX_LENGTH}"]
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as exc:
        return [f"condition {expression!r} is not a valid expression: {exc.msg} (column {exc.offset})"]
    known_vars = variables if isinstance(variables, (set, frozenset)) else set(variables)
    known_stages = stage_ids if isinstance(stage_ids, (set, frozenset)) else set(stage_ids)
    problems: list[str] = []
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED_NODES):
            problems.append(f"condition {expression!r} uses {type(node).__name__}, which is not allowed")
        elif isinstance(node, ast.Name) and node.id not in NAMES and node.id not in LITERALS \
                and node.id not in FUNCTIONS:
            problems.append(
                f"condition {expression!r} uses unknown name '{node.id}'; "
                f"it may use {', '.join(NAMES)}, true/false/null and {', '.join(FUNCTIONS)}()"
            )
        elif isinstance(node, ast.Attribute) and node.attr.startswith("_"):
            problems.append(f"condition {expression!r} reads '{node.attr}'; names starting with '_' are not allowed")
        elif isinstance(node, ast.Call) and not (isinstance(node.func, ast.Name) and node.func.id in FUNCTIONS):
            problems.append(f"condition {expression!r} calls something other than {', '.join(FUNCTIONS)}()")
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.value.id == "outputs" and node.attr not in known_stages:
                problems.append(f"condition {expression!r} reads outputs.{node.attr}, but there is no stage '{node.attr}'")
            elif node.value.id == "variables" and node.attr not in known_vars:
                problems.append(f"condition {expression!r} reads variables.{node.attr}, which is not defined")
    return problems


def reads_item(expression: str) -> bool:
    """Whether the condition reads `item` or `matrix`: then it is decided per fan-out item."""
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError:
        return False
    return any(isinstance(n, ast.Name) and n.id in ("item", "matrix") for n in ast.walk(tree))


def evaluate(
    expression: str,
    *,
    variables: Mapping[str, Any] | None = None,
    outputs: Mapping[str, Any] | None = None,
    context: Mapping[str, Any] | None = None,
    matrix: Mapping[str, Any] | None = None,
    item: Any = None,
) -> bool:
    """The truth of `expression` against a run's values. Raises ValueError on evaluation errors."""
    names: dict[str, Any] = dict(LITERALS)
    names.update(
        variables=Namespace(variables or {}), outputs=Namespace(outputs or {}),
        context=Namespace(context or {}), matrix=Namespace(matrix or {}), item=_wrap(item),
    )
    evaluator = EvalWithCompoundTypes(names=names, functions=FUNCTIONS)
    try:
        return bool(evaluator.eval(expression.strip()))
    except Exception as exc:  # simpleeval raises many kinds; the stage records the message
        raise ValueError(f"condition {expression!r} could not be evaluated: {exc}") from exc
