"""Stage conditions (`when:`): parsed at load time, evaluated safely at run time.

An expression sees `variables`, `outputs` (upstream outputs by stage id),
`context` (the run's shared context), `matrix` and `item`, plus the literals
`true/false/null`. Evaluation is simpleeval's: no imports, no dunder access,
no calls but a short allow-list. `check()` rejects at load time what would
fail at run time for a reason the author can fix now: a syntax error, an
unknown name, a construct that is not allowed, an `outputs.X` that names no
stage, a `variables.X` that is not defined, and constructs that allocate without bound:
repeating a list, tuple, mapping or text (`[1] * n`, `'ab' * n`) more than MAX_REPEAT times or
by anything but a number written in the condition, and numbers beyond `max_integer`.
(`**` is not allowed at all.)

At run time, evaluation is bounded (`evaluate(..., max_steps=...)`): one step is one node of the
expression evaluated, or DATA_PER_STEP units of data touched (an item of a list or mapping, or 64
characters of text) by `str()`, `min`/`max`/`any`/`all`, a comparison or `+`/`*`. A condition
over its budget fails its stage with a ConditionError; it can never pin a worker.
"""

from __future__ import annotations

import ast
import operator
import types
from collections.abc import Iterable, Mapping
from typing import Any

from simpleeval import DISALLOW_FUNCTIONS, EvalWithCompoundTypes, FeatureNotAvailable, safe_add, safe_mult

NAMES = ("variables", "outputs", "context", "matrix", "item")
LITERALS = {"true": True, "false": False, "null": None, "True": True, "False": False, "None": None}
FUNCTIONS = {
    "len": len,
    "min": min,
    "max": max,
    "abs": abs,
    "round": round,
    "int": int,
    "float": float,
    "str": str,
    "bool": bool,
    "any": any,
    "all": all,
}
MAX_LENGTH = 2000
MAX_REPEAT = 100  # a list or text literal may be repeated at most this many times
DEFAULT_MAX_STEPS = 10_000  # Settings.condition_max_steps's default
DATA_PER_STEP = 100
DEFAULT_MAX_INTEGER = 2**53  # Settings.max_integer's default

_ALLOWED_NODES = (
    ast.Expression,
    ast.BoolOp,
    ast.And,
    ast.Or,
    ast.UnaryOp,
    ast.Not,
    ast.USub,
    ast.UAdd,
    ast.BinOp,
    ast.Add,
    ast.Sub,
    ast.Mult,
    ast.Div,
    ast.FloorDiv,
    ast.Mod,
    ast.Compare,
    ast.Eq,
    ast.NotEq,
    ast.Lt,
    ast.LtE,
    ast.Gt,
    ast.GtE,
    ast.In,
    ast.NotIn,
    ast.Is,
    ast.IsNot,
    ast.Name,
    ast.Load,
    ast.Constant,
    ast.Attribute,
    ast.Subscript,
    ast.Call,
    ast.IfExp,
    ast.List,
    ast.Tuple,
    ast.Set,
    ast.Dict,
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


def check(
    expression: str,
    variables: Iterable[str],
    stage_ids: Iterable[str],
    *,
    max_integer: int = DEFAULT_MAX_INTEGER,
) -> list[str]:
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
        elif (
            isinstance(node, ast.Name)
            and node.id not in NAMES
            and node.id not in LITERALS
            and node.id not in FUNCTIONS
        ):
            problems.append(
                f"condition {expression!r} uses unknown name '{node.id}'; "
                f"it may use {', '.join(NAMES)}, true/false/null and {', '.join(FUNCTIONS)}()"
            )
        elif isinstance(node, ast.Attribute) and node.attr.startswith("_"):
            problems.append(
                f"condition {expression!r} reads '{node.attr}'; names starting with '_' are not allowed"
            )
        elif isinstance(node, ast.Call) and not (
            isinstance(node.func, ast.Name) and node.func.id in FUNCTIONS
        ):
            problems.append(f"condition {expression!r} calls something other than {', '.join(FUNCTIONS)}()")
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.value.id == "outputs" and node.attr not in known_stages:
                problems.append(
                    f"condition {expression!r} reads outputs.{node.attr}, but there is no stage '{node.attr}'"
                )
            elif node.value.id == "variables" and node.attr not in known_vars:
                problems.append(f"condition {expression!r} reads variables.{node.attr}, which is not defined")
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, (int, float))
            and not isinstance(node.value, bool)
            and abs(node.value) > max_integer
        ):
            problems.append(
                f"condition {expression!r} uses a number larger than the limit of {max_integer:,} "
                "(max_integer)"
            )
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
            problem = _repetition_problem(node)
            if problem:
                problems.append(f"condition {expression!r} {problem}")
    return list(dict.fromkeys(problems))  # `[[1] * n] * n` would say the same twice


def _makes_sequence(node: ast.AST) -> bool:
    """Whether `node` surely evaluates to a list, tuple, set, mapping or text."""
    if isinstance(node, (ast.List, ast.Tuple, ast.Set, ast.Dict)):
        return True
    if isinstance(node, ast.Constant):
        return isinstance(node.value, (str, bytes))
    if isinstance(node, ast.Call):
        return isinstance(node.func, ast.Name) and node.func.id == "str"
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
        return _makes_sequence(node.left) or _makes_sequence(node.right)
    return False


def _repetition_problem(node: ast.BinOp) -> str | None:
    """Why `a * b` could allocate without bound, or None: a literal sequence may be repeated only by a
    number written in the condition, at most MAX_REPEAT."""
    for seq, count in ((node.left, node.right), (node.right, node.left)):
        if _makes_sequence(seq):
            if (
                isinstance(count, ast.Constant)
                and isinstance(count.value, int)
                and not isinstance(count.value, bool)
            ):
                if count.value > MAX_REPEAT:
                    return (
                        f"repeats a list or text {count.value:,} times; the limit is {MAX_REPEAT} "
                        "(conditions must not allocate without bound)"
                    )
                return None
            if not _makes_sequence(count):
                return (
                    "repeats a list or text by a computed number; only a number written in the "
                    f"condition, at most {MAX_REPEAT}, may repeat one"
                )
    return None


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
    max_steps: int = DEFAULT_MAX_STEPS,
) -> bool:
    """The truth of `expression` against a run's values, within `max_steps` (Settings.condition_max_steps).

    Raises ValueError on evaluation errors, a construct that is not allowed, or a budget overrun."""
    names: dict[str, Any] = dict(LITERALS)
    names.update(
        variables=Namespace(variables or {}),
        outputs=Namespace(outputs or {}),
        context=Namespace(context or {}),
        matrix=Namespace(matrix or {}),
        item=_wrap(item),
    )
    text = expression.strip() if isinstance(expression, str) else ""
    try:
        if len(text) > MAX_LENGTH:
            raise ValueError(f"it is {len(text)} characters long; the limit is {MAX_LENGTH}")
        tree = ast.parse(text, mode="eval")
        for node in ast.walk(tree):  # a stored graph is not re-validated: check the constructs again
            if not isinstance(node, _ALLOWED_NODES):
                raise ValueError(f"{type(node).__name__} is not allowed")
            if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult) and _repetition_problem(node):
                raise ValueError(_repetition_problem(node))
        evaluator = _BoundedEval(names, max_steps)
        return bool(evaluator.eval(text))
    except Exception as exc:  # simpleeval raises many kinds; the stage records the message
        raise ValueError(f"condition {expression!r} could not be evaluated: {exc}") from exc


class ConditionTooCostly(Exception):
    """A condition went over its evaluation budget."""


class _BoundedEval(EvalWithCompoundTypes):
    """simpleeval, with every node and every unit of data touched charged against a budget."""

    def __init__(self, names: dict[str, Any], max_steps: int):
        self.units = max(max_steps, 1) * DATA_PER_STEP
        self.max_steps = max_steps
        functions = {name: self._charging(fn) for name, fn in FUNCTIONS.items()}
        functions["len"] = len  # O(1)
        super().__init__(names=names, functions=functions)
        for op in (ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.In, ast.NotIn):
            self.operators[op] = self._charging(self.operators[op])
        self.operators[ast.Add] = self._sized(safe_add)
        self.operators[ast.Mult] = self._sized(safe_mult)
        self.operators[ast.Is] = operator.is_
        self.operators[ast.IsNot] = operator.is_not

    def charge(self, units: int) -> None:
        self.units -= units
        if self.units < 0:
            raise ConditionTooCostly(f"it takes more than {self.max_steps:,} steps (condition_max_steps)")

    def _eval(self, node: ast.AST) -> Any:
        self.charge(DATA_PER_STEP)
        return super()._eval(node)

    def _check_disallowed_items(self, item: Any) -> None:
        """simpleeval walks every result in full, which a list repeated by reference makes endless.
        Checking the result alone is enough: each element of a list built here was itself a result,
        checked when it was made, and the names hold only JSON-like data."""
        if isinstance(item, types.ModuleType) or (callable(item) and item in DISALLOW_FUNCTIONS):
            raise FeatureNotAvailable("Sorry, that is not allowed")

    def _charging(self, fn: Any) -> Any:
        def charged(*args: Any) -> Any:
            for arg in args:
                self.charge(_weight(arg, self.units + 1))
            return fn(*args)

        return charged

    def _sized(self, fn: Any) -> Any:
        def sized(a: Any, b: Any) -> Any:
            result = fn(a, b)
            if isinstance(result, str):
                self.charge(1 + len(result) // 64)
            elif hasattr(result, "__len__"):
                self.charge(1 + len(result))
            return result

        return sized


def _weight(value: Any, limit: int) -> int:
    """Units of data in `value` (an item each, 64 characters of text each), counted up to `limit` only:
    a list repeated by reference can stand for billions of items in a few bytes."""
    total = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, Namespace):
            item = item._data
        if isinstance(item, str):
            total += 1 + len(item) // 64
        elif isinstance(item, Mapping):
            total += 1 + len(item)
            if total <= limit:
                stack.extend(item.keys())
                stack.extend(item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            total += 1 + len(item)
            if total <= limit:
                stack.extend(item)
        else:
            total += 1
        if total > limit:
            return total
    return total
