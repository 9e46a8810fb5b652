"""`${NAME}` and `${NAME:-default}` variables in a parsed pipeline file.

The loader parses a file into plain data, then hands it here (`interpolate`):

1. strings in the top-level `variables` may read the environment only, never each other,
   so their order never matters;
2. `--set` overrides then replace or add variables, as given: an override is never interpolated;
3. every other string may then read a variable, else the environment, else the default,
   except a stage's `when`/`condition`, which are expressions evaluated later; in a stage's
   `concurrency_key`, `${params.NAME}` is left for resolve to fill from the stage's params.

A stage's `run` is a command line, and a variable never changes its shape: a string `run` is
split into arguments (shlex) *first*, then each argument is interpolated, so `touch out-${name}`
with name `x INJECTED` is the two arguments `touch` and `out-x INJECTED`. A value filled into an
argument is written as text (numbers as digits, true/false/null as JSON); a list or mapping would
add arguments and is refused.

`$${` is a literal `${`. A string that is exactly one reference takes the value's own type
(a list stays a list); inside longer text a value is written as text. Substituted values are
counted against a limit, so a large variable used in many places cannot blow up the data.

Problems are collected, not raised, so every unresolved reference is reported at once.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
from collections.abc import Mapping
from typing import Any

from orchestration.errors import InvalidPipeline, Problem
from orchestration.language.document import Document, PathT

_REF = re.compile(r"\$\$\{|\$\{([^}]*)(\}?)")
_NAME_DEFAULT = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?", re.DOTALL)
_LEAVES = {int, float, bool, type(None)}  # what `copy` returns as it is (and a str without `${`)


def interpolate(
    doc: Document, overrides: Mapping[str, Any], env: Mapping[str, str], *, walk: bool, limit: int
) -> tuple[dict[str, Any], list[tuple[PathT, int | None, str]]]:
    """`doc.data` with `${...}` resolved and `overrides` in its variables, and every problem found.

    Each problem is (path, line, message). `walk` False (no string holds `${` and no alias shares
    a value) skips copying the data. Raise InvalidPipeline at once if substituted values add up
    to over `limit` characters.
    """
    data = doc.data
    interpolator = _Interpolator(doc, env, limit)
    written = data.get("variables", {})
    if not isinstance(written, dict):
        interpolator.report(("variables",), "variables must be a mapping of name: value")
        written = {}
    interpolator.written = set(written)
    variables = interpolator.copy(written, ("variables",)) if walk else dict(written)
    variables.update(overrides)  # final as given: an override is never interpolated
    interpolator.variables = variables
    result: dict[str, Any] = {}
    for key, value in data.items():
        if key == "variables":
            result[key] = variables
        else:
            result[key] = interpolator.copy(value, (key,)) if walk else value
    if variables and "variables" not in result:
        result["variables"] = variables
    return result, interpolator.problems


class _Unresolved(Exception):
    """A reference that nothing resolves; args[0] says why."""


class _Interpolator:
    """Resolves the `${...}` of a document's strings, noting a problem for each it cannot."""

    def __init__(self, doc: Document, env: Mapping[str, str], limit: int):
        self.doc, self.env, self.limit = doc, env, limit
        self.written: set[str] = set()  # names the file's variables block defines, for a hint
        self.variables: dict[str, Any] | None = None  # None while the variables themselves are resolved
        self.problems: list[tuple[PathT, int | None, str]] = []
        self.spent = 0  # characters substituted so far, against `limit`
        self.sizes: dict[str, int] = {}

    def report(self, path: PathT, message: str) -> None:
        self.problems.append((path, self.doc.line_of(*path), message))

    def copy(self, value: Any, path: PathT) -> Any:
        """A copy of `value` with its strings interpolated (recursion depth is at most loader.MAX_DEPTH).

        A value that copies as itself (a number, or a string without `${`) is taken as it is,
        without a call or its path: a 10,000-stage file has over 100,000 of them."""
        if isinstance(value, str):
            return self.substitute(value, path, _is_key(path)) if "${" in value else value
        if isinstance(value, list):
            return [
                v if (t := type(v)) in _LEAVES or (t is str and "${" not in v) else self.copy(v, path + (i,))
                for i, v in enumerate(value)
            ]
        if isinstance(value, dict):
            if len(path) == 2 and path[0] == "stages":
                return self.stage(value, path)
            return {
                k: v
                if (t := type(v)) in _LEAVES or (t is str and "${" not in v)
                else self.copy(v, path + (k,))
                for k, v in value.items()
            }
        return value

    def stage(self, value: dict[Any, Any], path: PathT) -> dict[Any, Any]:
        """A copy of a stage's mapping: its `when`/`condition` left alone, its `run` split first."""
        out = {}
        for k, v in value.items():
            if (t := type(v)) in _LEAVES or (t is str and "${" not in v):
                out[k] = v  # as `copy` and `argv` would return it
            elif _is_expression(path + (k,)):
                out[k] = v
            elif _is_run(path + (k,)):
                out[k] = self.argv(v, path + (k,))
            else:
                out[k] = self.copy(v, path + (k,))
        return out

    def argv(self, value: Any, path: PathT) -> Any:
        """A stage's `run`, split first (a string) and then interpolated argument by argument."""
        if isinstance(value, str):
            if "${" not in value:
                return value  # the spec splits it
            try:
                parts = shlex.split(value)
            except ValueError as exc:
                self.report(path, f"run: {value!r} can't be split into arguments: {exc}")
                return value
            return [self.argument(part, path) for part in parts]
        if isinstance(value, list):
            return [
                self.argument(item, path + (i,)) if isinstance(item, str) else self.copy(item, path + (i,))
                for i, item in enumerate(value)
            ]
        return self.copy(value, path)

    def argument(self, text: str, path: PathT) -> Any:
        """One argument of `run`, interpolated: always one argument, never more or none."""
        if "${" not in text:
            return text
        value = self.substitute(text, path)
        if isinstance(value, str):
            return value
        if isinstance(value, (list, dict)):
            self.report(
                path,
                f"{text!r} is a {'list' if isinstance(value, list) else 'mapping'}; a variable in "
                "run fills one argument and can't add arguments (write each argument in the list)",
            )
            return text
        return _as_text(value)

    def substitute(self, text: str, path: PathT, keep_params: bool = False) -> Any:
        """`text` with `${name}`/`${name:-default}` replaced and `$${` made a literal `${`.

        A string that is exactly one reference takes the value's own type (a list stays a list);
        inside longer text a value is written as text (JSON for true/false/null, lists and mappings).
        `keep_params` (a stage's `concurrency_key`): `${params.…}` is left as it is, for resolve.
        """
        parts: list[str] = []
        end = 0
        for match in _REF.finditer(text):
            parts.append(text[end : match.start()])
            end = match.end()
            if match.group(0) == "$${":
                parts.append("${")
                continue
            if keep_params and match.group(1).startswith("params."):
                parts.append(match.group(0))
                continue
            ref = _NAME_DEFAULT.fullmatch(match.group(1))
            if not match.group(2) or ref is None or "${" in (ref.group(2) or ""):
                self.report(
                    path, f"{match.group(0)!r} is not a reference: write ${{NAME}} or ${{NAME:-default}}"
                )
                continue
            try:
                value = self.lookup(ref.group(1), ref.group(2))
            except _Unresolved as exc:
                self.report(path, exc.args[0])
                continue
            if match.span() == (0, len(text)):
                return copy.deepcopy(value)
            parts.append(value if isinstance(value, str) else _as_text(value))
        parts.append(text[end:])
        return "".join(parts)

    def lookup(self, name: str, default: str | None) -> Any:
        """The value of `${name}`: a variable (outside `variables`), the environment, or the default."""
        if self.variables is not None and name in self.variables:
            return self.charge(name, self.variables[name])
        if name in self.env:
            return self.charge("$" + name, self.env[name])
        if default is not None:
            return default  # written out at each use, so it can't multiply the file
        if self.variables is not None:
            raise _Unresolved(f"${{{name}}} is not a variable, not set in the environment and has no default")
        hint = " (variables can read only the environment, not each other)" if name in self.written else ""
        raise _Unresolved(f"${{{name}}} is not set in the environment and has no default{hint}")

    def charge(self, key: str, value: Any) -> Any:
        """`value`, once its size is counted: a big variable used in many places must not blow up."""
        if key not in self.sizes:
            self.sizes[key] = len(value) if isinstance(value, str) else len(json.dumps(value, default=str))
        self.spent += self.sizes[key]
        if self.spent > self.limit:
            message = "substituted values add up to over 10 MiB; is a large variable used in many places?"
            raise InvalidPipeline([Problem(message, source=self.doc.source)])
        return value


def _is_expression(path: PathT) -> bool:
    """Whether `path` is a stage's `when`/`condition`, evaluated later and so not interpolated."""
    return len(path) == 3 and path[0] == "stages" and path[2] in ("when", "condition")


def _is_key(path: PathT) -> bool:
    """Whether `path` is a stage's `concurrency_key`, whose `${params.NAME}` resolve fills in."""
    return len(path) == 3 and path[0] == "stages" and path[2] == "concurrency_key"


def _is_run(path: PathT) -> bool:
    """Whether `path` is a stage's `run`, whose arguments a variable must not split or add to."""
    return len(path) == 3 and path[0] == "stages" and path[2] == "run"


def _as_text(value: Any) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return json.dumps(value, default=str)
