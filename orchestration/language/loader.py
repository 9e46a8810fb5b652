"""Reading a pipeline file: safe YAML/JSON parsing that keeps line numbers.

A pipeline file comes from users and sometimes from places nobody checked, so reading it must
fail fast and clearly on hostile input instead of hanging, eating memory or crashing:

1. size and encoding are checked on the raw bytes, and at most MAX_FILE_BYTES are ever read;
2. the data is built in one iterative pass over libyaml's event stream (`_Reader`), which
   refuses foreign tags, nesting past MAX_DEPTH and aliases expanding past MAX_NODES as they
   arrive. PyYAML's composer is never used: libyaml's recurses in C and crashes on deep input,
   and building from events directly also records each value's line, refuses a key given twice
   (PyYAML keeps the last) and is faster than composing nodes first.

JSON is YAML, so `.json` files take the same path. Unquoted values are typed by YAML 1.2's
core schema (see _IMPLICIT), which matches JSON, rather than PyYAML's YAML 1.1; `--set` values
(parse_override) are typed the same way.

The parsed data then has its `${...}` variables resolved by `interpolation.interpolate`.
"""

from __future__ import annotations

import functools
import gc
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from yaml.events import (
    AliasEvent,
    DocumentStartEvent,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
)

from orchestration.errors import InvalidPipeline, Problem
from orchestration.language.ids import is_stage_id
from orchestration.language.interpolation import interpolate
from orchestration.language.spec import Limits

MAX_FILE_BYTES = 10 * 1024 * 1024
MAX_DEPTH = 64
MAX_NODES = 1_000_000  # after alias expansion
MAX_DIGITS = 1000  # an integer written longer is refused unread (int() refuses 4,300 decimal digits)

Key = str | int
PathT = tuple[Key, ...]

_Y = "tag:yaml.org,2002:"
_STR, _INT, _FLOAT, _BOOL, _NULL, _SEQ, _MAP = (
    _Y + t for t in ("str", "int", "float", "bool", "null", "seq", "map")
)
_ALLOWED_TAGS = {None, "!", _STR, _INT, _FLOAT, _BOOL, _NULL, _SEQ, _MAP}
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when installed: ~10x faster

# Plain (unquoted, untagged) scalars follow YAML 1.2's core schema, as JSON and most tools today
# do, not PyYAML's YAML 1.1: only true/false are booleans (`on:` and `country: NO` stay strings),
# 1e-3 is a float, and 2024-01-01, 1:30 and 0755-style octals are not dates, times or octals.
_IMPLICIT = [
    (_NULL, re.compile(r"~|null|Null|NULL|")),
    (_BOOL, re.compile(r"true|True|TRUE|false|False|FALSE")),
    (_INT, re.compile(r"[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+")),
    (
        _FLOAT,
        re.compile(
            r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?|[-+]?\.(inf|Inf|INF)|\.(nan|NaN|NAN)"
        ),
    ),
]
_MAYBE_TYPED = re.compile(r"[-+.0-9~nNtTfF]|\Z")  # the first characters that any of these allow

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # a variable's name, for --set

_MERGE = object()  # a plain `<<` key: merge the mappings that follow (see _Reader._end)
_SKIP = object()  # a key already reported as wrong; its value is dropped
_NO_KEY = object()  # a mapping waiting for its next key


@dataclass(frozen=True)
class Document:
    """A parsed pipeline file: its top-level mapping and where each value was written."""

    data: dict[str, Any]
    lines: dict[PathT, int]
    """Path -> 1-based line: a mapping entry's key line, a list item's own line; () -> 1."""
    source: str

    def line_of(self, *path: Key) -> int | None:
        """The line of `path`, or of its longest prefix that has one (e.g. a value from an alias)."""
        for end in range(len(path), -1, -1):
            line = self.lines.get(path[:end])
            if line is not None:
                return line
        return None


def load_document(
    path: str | Path,
    overrides: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    limits: Limits | None = None,
) -> Document:
    """Read, parse and interpolate the pipeline file at `path`; raise InvalidPipeline on any problem."""
    source = str(path)
    try:
        size = os.stat(path).st_size
        if size <= MAX_FILE_BYTES:
            with open(path, "rb") as file:
                raw = file.read(MAX_FILE_BYTES + 1)  # a device or a growing file may not stop at its size
            size = len(raw)
    except OSError as exc:
        raise InvalidPipeline(
            [Problem(f"cannot read {source}: {exc.strerror or exc}", source=source)]
        ) from None
    if size > MAX_FILE_BYTES:
        raise InvalidPipeline([Problem(f"{source} is {size:,} bytes; the limit is 10 MiB", source=source)])
    with gc_paused():
        return load_text(raw, source, overrides, env, limits)


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cycle collector while building a large tree of fresh objects.

    A 10,000-stage file makes hundreds of thousands of containers, none of them garbage;
    the collector would walk them again and again (about a fifth of the load time).
    The size limits above bound what is built meanwhile.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def load_text(
    text: str | bytes,
    source: str = "<string>",
    overrides: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    limits: Limits | None = None,
) -> Document:
    """Parse and interpolate pipeline `text` (YAML or JSON); raise InvalidPipeline on any problem.

    Strings in the top-level `variables` may use `${NAME}` and `${NAME:-default}` to read `env`
    (os.environ by default) - the environment only, not other variables. `overrides` (`--set`,
    see parse_override) then replace or add variables, as given. Every other string may use
    `${name}`: a variable, else the environment, else the default; a stage's `when` and
    `condition` are expressions and are left alone. `$${` is a literal `${`.
    """
    if isinstance(text, str):
        # Lone surrogates (from a lenient decode upstream) are then reported like bad bytes.
        text = text[: MAX_FILE_BYTES + 1].encode("utf-8", "surrogatepass")
    if len(text) > MAX_FILE_BYTES:
        raise InvalidPipeline([Problem(f"{source} is over the limit of 10 MiB", source=source)])
    try:
        reader = _Reader(source, limits or Limits())
        document = reader.read(_decode(text, source))
        env = os.environ if env is None else env
        walk = reader.references or reader.aliased
        data, problems = interpolate(document, overrides or {}, env, walk=walk, limit=MAX_FILE_BYTES)
        if problems:
            raise InvalidPipeline([_problem(document.data, source, *p) for p in problems])
        return Document(data, document.lines, source)
    except (RecursionError, MemoryError):  # a last line of defence; the limits should prevent both
        raise InvalidPipeline(
            [Problem("the file is too large or too deeply nested to read", source=source)]
        ) from None


def parse_override(item: str) -> tuple[str, Any]:
    """`NAME=VALUE` from `--set`, VALUE read as a YAML scalar: `30` -> 30, `true` -> True, `a b` -> 'a b'."""
    name, equals, value = item.partition("=")
    name = name.strip()
    if not equals or not _NAME.fullmatch(name):
        message = (
            f"--set {item!r} must be NAME=VALUE, NAME being letters, digits and _ (not starting with a digit)"
        )
        raise InvalidPipeline([Problem(message, source="--set")])
    try:
        return name, _plain(value) if value else ""
    except ValueError:  # a decimal integer of thousands of digits
        raise InvalidPipeline(
            [Problem(f"--set {name}: {_too_many_digits(value, Limits())}", source="--set")]
        ) from None


def _decode(raw: bytes, source: str) -> str:
    try:
        return raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        message = (
            f"{source} is not UTF-8 text: byte 0x{raw[exc.start]:02x} at offset {exc.start:,} (line {line}) "
            "can't be decoded; save the file as UTF-8"
        )
        raise InvalidPipeline([Problem(message, line=line, source=source)]) from None


class _Refused(Exception):
    """(message, line): the input breaks a limit or a rule; reading stops at once."""


class _Open:
    """A sequence or mapping whose end event has not come yet."""

    __slots__ = ("anchor", "before", "key", "line", "merges", "path", "tallest", "value")

    def __init__(self, value: list | dict, path: PathT | None, line: int, anchor: str | None, before: int):
        self.value, self.path, self.line, self.anchor, self.before = value, path, line, anchor, before
        self.tallest = 0  # collection levels in the tallest child so far
        self.key: Any = _NO_KEY
        self.merges: list[tuple[Any, int]] = []  # (`<<` value, its line)


class _Reader:
    """Python data from libyaml events, built iteratively with the limits checked on each event."""

    def __init__(self, source: str, limits: Limits):
        self.source = source
        self.limits = limits
        self.lines: dict[PathT, int] = {(): 1}
        self.problems: list[tuple[PathT, int | None, str]] = []
        self.open: list[_Open] = []
        self.anchors: dict[str, tuple[Any, int, int]] = {}  # finished: value, nodes expanded, height
        self.started: set[str] = set()
        self.nodes = 0  # values so far, each alias counted as what it expands to
        self.aliased = False
        self.references = False  # whether any string holds `${`; if none, interpolation has no work
        self.top: tuple[Any, int] | None = None

    def read(self, text: str) -> Document:
        documents = 0
        try:
            for event in yaml.parse(text, Loader=_LOADER):
                kind = type(event)
                if kind is ScalarEvent:
                    self._scalar(event)
                elif kind is MappingStartEvent or kind is SequenceStartEvent:
                    self._start(event)
                elif kind is MappingEndEvent or kind is SequenceEndEvent:
                    self._end()
                elif kind is AliasEvent:
                    self._alias(event)
                elif kind is DocumentStartEvent:
                    documents += 1
                    if documents > 1:
                        line = event.start_mark.line + 1
                        raise _Refused(
                            "the file holds more than one YAML document (---); keep one per file", line
                        )
                elif kind is StreamEndEvent:
                    break
        except _Refused as exc:
            message, line = exc.args
            raise InvalidPipeline([Problem(message, line=line, source=self.source)]) from None
        except yaml.YAMLError as exc:
            raise InvalidPipeline([_syntax_problem(exc, text, self.source)]) from None
        if self.top is None:
            message = f"{self.source} is empty; a pipeline needs at least name and stages"
            raise InvalidPipeline([Problem(message, source=self.source)])
        data, line = self.top
        if not isinstance(data, dict):
            shape = "a list" if isinstance(data, list) else "a single value"
            message = f"the top level must be a mapping (name: ..., stages: ...), not {shape}"
            raise InvalidPipeline([Problem(message, line=line, source=self.source)])
        if self.problems:
            raise InvalidPipeline([_problem(data, self.source, *p) for p in self.problems])
        return Document(data, self.lines, self.source)

    def _count(self, nodes: int, line: int) -> None:
        self.nodes += nodes
        if self.nodes > MAX_NODES:
            if self.aliased:
                message = f"aliases expand too much: the file would hold over {MAX_NODES:,} values"
                raise _Refused(message, line)
            raise _Refused(f"the file has over {MAX_NODES:,} values", line)

    def _check_node(self, event: Any, line: int) -> None:
        """Refuse a foreign tag or a reused anchor, and count the node."""
        if event.tag is not None and event.tag not in _ALLOWED_TAGS:
            tag = event.tag.replace(_Y, "!!", 1) if event.tag.startswith(_Y) else event.tag
            raise _Refused(f"tag {tag} is not allowed: a pipeline file is plain data; remove the tag", line)
        if event.anchor is not None:
            if event.anchor in self.started:
                raise _Refused(f"anchor &{event.anchor} is defined twice", line)
            self.started.add(event.anchor)
        self._count(1, line)

    def _scalar(self, event: ScalarEvent) -> None:
        line = event.start_mark.line + 1
        tag = event.tag
        if tag is None and event.anchor is None and self.nodes < MAX_NODES:
            self.nodes += 1  # the common case, inlined: this runs for every scalar of the file
        else:
            self._check_node(event, line)
        if tag is None and event.implicit[0]:
            try:
                value = _plain(event.value)
            except ValueError:  # only a decimal integer too long to read
                self.problems.append(
                    (self._child_path() or (), line, _too_many_digits(event.value, self.limits))
                )
                value = None
        elif tag is None or tag == "!":
            value = event.value  # quoted, or `!`: always a string
        else:
            try:
                value = _construct(tag, event.value)
            except (ValueError, KeyError):
                shown = tag.replace(_Y, "!!")
                text = (
                    event.value
                    if len(event.value) <= 40
                    else f"{event.value[:40]}... ({len(event.value):,} characters)"
                )
                self.problems.append((self._child_path() or (), line, f"{text!r} is not a valid {shown}"))
                value = None
        if type(value) is str and "${" in value:
            self.references = True
        if event.anchor is not None:
            self.anchors[event.anchor] = (value, 1, 0)
        if value == "<<" and tag is None and event.implicit[0] and self._expects_key():
            value = _MERGE
        self._add(value, line)

    def _start(self, event: MappingStartEvent | SequenceStartEvent) -> None:
        line = event.start_mark.line + 1
        self._check_node(event, line)
        if len(self.open) >= MAX_DEPTH:
            raise _Refused(f"the file is nested more than {MAX_DEPTH} levels deep", line)
        value: list | dict = {} if type(event) is MappingStartEvent else []
        self.open.append(_Open(value, self._child_path(), line, event.anchor, self.nodes - 1))

    def _end(self) -> None:
        done = self.open.pop()
        if done.merges and isinstance(
            done.value, dict
        ):  # `<<: *base` or `<<: [*a, *b]`: keys written here win, then earlier sources
            for source, line in done.merges:
                for mapping in source if isinstance(source, list) else [source]:
                    if not isinstance(mapping, dict):
                        self.problems.append(
                            (done.path or (), line, "<< must be followed by a mapping or a list of mappings")
                        )
                        break
                    for key, value in mapping.items():
                        done.value.setdefault(key, value)
        height = done.tallest + 1
        if done.anchor is not None:
            self.anchors[done.anchor] = (done.value, self.nodes - done.before, height)
        self._add(done.value, done.line, height)

    def _alias(self, event: AliasEvent) -> None:
        line = event.start_mark.line + 1
        if event.anchor not in self.anchors:
            where = "inside its own anchor" if event.anchor in self.started else "before its anchor"
            raise _Refused(f"alias *{event.anchor} is used {where}", line)
        value, nodes, height = self.anchors[event.anchor]
        self.aliased = True
        self._count(nodes, line)
        if len(self.open) + height > MAX_DEPTH:
            raise _Refused(f"alias *{event.anchor} nests the file more than {MAX_DEPTH} levels deep", line)
        self._add(value, line, height)  # shared, not copied: interpolation copies everything anyway

    def _expects_key(self) -> bool:
        return bool(self.open) and type(self.open[-1].value) is dict and self.open[-1].key is _NO_KEY

    def _child_path(self) -> PathT | None:
        """The path of the node about to be added, None where no line is worth recording."""
        if not self.open:
            return ()
        parent = self.open[-1]
        if parent.path is None:
            return None
        if type(parent.value) is list:
            return parent.path + (len(parent.value),)
        key = parent.key
        return None if key is _NO_KEY or key is _MERGE or key is _SKIP else parent.path + (key,)

    def _add(self, value: Any, line: int, height: int = 0) -> None:
        """Put a finished node into its parent: a list item, a mapping key, or a mapping value.

        `height` is the node's levels of collections, for the depth an alias to its parent adds.
        """
        if not self.open:
            self.top = (value, line)
            return
        parent = self.open[-1]
        if height:
            parent.tallest = max(parent.tallest, height)
        container = parent.value
        if type(container) is list:
            if parent.path is not None:
                self.lines[parent.path + (len(container),)] = line
            container.append(value)
        elif parent.key is _NO_KEY:
            parent.key = self._key(parent, value, line)
        else:
            key, parent.key = parent.key, _NO_KEY
            if key is _MERGE:
                parent.merges.append((value, line))
            elif key is not _SKIP:
                container[key] = value

    def _key(self, parent: _Open, key: Any, line: int) -> Any:
        if key is _MERGE:
            return _MERGE
        where = parent.path or ()
        if isinstance(key, (list, dict)):
            self.problems.append((where, line, "a mapping key must be a single value, not a list or mapping"))
            return _SKIP
        if key in parent.value:  # merged keys arrive only at the end, so this is a key written twice
            first = self.lines.get(parent.path + (key,)) if parent.path is not None else None
            message = f"key {key!r} is given twice" + (f" (first on line {first})" if first else "")
            self.problems.append((where + (key,) if parent.path is not None else where, line, message))
            return _SKIP
        if parent.path is not None:
            self.lines[parent.path + (key,)] = line
        return key


@functools.lru_cache(maxsize=4096)  # files repeat most plain values: `noop`, `1`, `true`
def _plain(text: str) -> Any:
    """The value of an untagged, unquoted scalar: null, bool, int, float or the text itself."""
    if _MAYBE_TYPED.match(text):
        for tag, pattern in _IMPLICIT:
            if pattern.fullmatch(text):
                return _construct(tag, text)
    return text


def _construct(tag: str, text: str) -> Any:
    """The value of `text` as `tag`; ValueError or KeyError if it is not one."""
    if tag == _STR:
        return text
    if tag == _NULL:
        return None
    if tag == _BOOL:
        return {"true": True, "false": False}[text.lower()]
    if tag == _INT:
        base = {"0o": 8, "0x": 16}.get(text[:2].lower(), 10)
        if len(text) > MAX_DIGITS:  # int() of it would refuse or be slow; no file needs such a number
            raise ValueError(text)
        return int(text[2:] if base != 10 else text, base)
    if tag == _FLOAT:
        if text.lower().lstrip("+-") in (".inf", ".nan"):
            text = text.replace(".", "", 1)
        return float(text)
    raise ValueError(tag)  # !!seq or !!map on a scalar


def _too_many_digits(text: str, limits: Limits) -> str:
    return (
        f"an integer of {len(text.lstrip('+-')):,} digits is too large: integers may be at most "
        f"{limits.max_integer:,} (max_integer)"
    )


def _syntax_problem(exc: yaml.YAMLError, text: str, source: str) -> Problem:
    """The parser's complaint as a Problem with 1-based line and column."""
    kind = "JSON" if source.lower().endswith(".json") else "YAML"
    if isinstance(exc, yaml.reader.ReaderError):  # a character YAML forbids; it has no mark
        # libyaml counts the position in bytes of UTF-8, PyYAML's own reader in characters.
        before = (
            text.encode()[: exc.position].decode(errors="ignore")
            if _LOADER is not yaml.SafeLoader
            else text[: exc.position]
        )
        line, column = before.count("\n") + 1, len(before) - before.rfind("\n")
        code = exc.character if isinstance(exc.character, int) else ord(exc.character)
        problem = f"character U+{code:04X} is not allowed ({exc.reason})"
    else:
        mark = getattr(exc, "problem_mark", None)
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = getattr(exc, "problem", None) or str(exc)
        context, context_mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
        if context and context_mark is not None:
            problem += f" ({context} that starts on line {context_mark.line + 1})"
    message = f"{kind} syntax error at line {line}, column {column}: {problem}"
    return Problem(message, line=line, source=source)


def _problem(data: dict[str, Any], source: str, path: PathT, line: int | None, message: str) -> Problem:
    """A Problem naming the stage when `path` is inside `stages[i]`, and the path below it."""
    stage_id = None
    if len(path) >= 2 and path[0] == "stages" and isinstance(path[1], int):
        stages = data.get("stages")
        if isinstance(stages, list) and path[1] < len(stages) and isinstance(stages[path[1]], dict):
            candidate = stages[path[1]].get("id")
            stage_id = candidate if isinstance(candidate, str) and is_stage_id(candidate) else None
    shown = path[2:] if stage_id is not None else path
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in shown).lstrip(".")
    return Problem(f"{where}: {message}" if where else message, stage_id=stage_id, line=line, source=source)
