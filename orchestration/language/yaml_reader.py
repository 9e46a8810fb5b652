"""Python data from a YAML (or JSON) text, with the line of each value, built from libyaml's events.

One iterative pass over the event stream (`Reader`) refuses foreign tags, nesting past a depth
and aliases expanding past a number of values as they arrive. PyYAML's composer is never used:
libyaml's recurses in C and crashes on deep input, and building from events directly also
records each value's line, refuses a key given twice (PyYAML keeps the last) and is faster than
composing nodes first. Plain scalars are typed by `scalars.plain` (YAML 1.2's core schema).

Lines are recorded only when asked for (`record_lines`): by default a Document's lines are found
by a second pass the first time one is looked up, which only a problem does (document.Lines).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import yaml
from yaml.events import (
    AliasEvent,
    DocumentStartEvent,
    Event,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
)

from orchestration.errors import InvalidPipeline, Problem
from orchestration.language.document import Document, Lines, PathT, located_problem
from orchestration.language.limits import Limits
from orchestration.language.scalars import ALLOWED_TAGS, TAG_PREFIX, construct, plain, too_many_digits

_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when installed: ~10x faster

_MERGE = object()  # a plain `<<` key: merge the mappings that follow (see Reader._end)
_SKIP = object()  # a key already reported as wrong; its value is dropped
_NO_KEY = object()  # a mapping waiting for its next key


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


class Reader:
    """Python data from libyaml events, built iteratively with the limits checked on each event."""

    def __init__(
        self, source: str, limits: Limits, max_depth: int, max_nodes: int, record_lines: bool = False
    ):
        self.source = source
        self.record_lines = record_lines  # else the Document's lines are found by reading again
        self.limits = limits
        self.max_depth = max_depth  # levels of nesting
        self.max_nodes = max_nodes  # values, each alias counted as what it expands to
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
        try:
            parser = _LOADER(text)  # PyYAML's own reader checks the characters here
            try:
                # yaml.parse without its generator: get_event gives None after the stream's end
                self._events(iter(parser.get_event, None))
            finally:
                parser.dispose()
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
            if not self.record_lines:  # their paths and lines: the same refusal, read again
                return self._again(text)
            raise InvalidPipeline([located_problem(data, self.source, *p) for p in self.problems])
        if self.record_lines:
            return Document(data, self.lines, self.source)
        return Document(data, Lines(lambda: self._again(text).lines), self.source)

    def _again(self, text: str) -> Document:
        """`text` read again, recording the line of every value."""
        again = type(self)(self.source, self.limits, self.max_depth, self.max_nodes, record_lines=True)
        return again.read(text)

    def _events(self, events: Iterator[Event]) -> None:
        """Build the data from the events. The commonest ones - an untagged, unanchored scalar, a
        collection's start and its end - are handled inline (`_scalar`, `_start`, `_end` and `_add`
        do the same steps): this loop runs for every event of the file, 240,000 in a 10,000-stage
        one, and the calls were a tenth of reading it. Anything else goes to those methods."""
        stack, lines, max_nodes, max_depth = self.open, self.lines, self.max_nodes, self.max_depth
        top: _Open | None = None  # stack[-1]
        documents = 0
        for event in events:
            kind = type(event)
            if kind is ScalarEvent:
                if (
                    top is None
                    or event.tag is not None
                    or event.anchor is not None
                    or self.nodes >= max_nodes
                ):
                    self._scalar(event)
                    continue
                value = event.value
                if event.implicit[0]:
                    try:
                        value = plain(value)
                    except ValueError:  # only a decimal integer too long to read
                        self._scalar(event)
                        continue
                    if value == "<<":  # a merge key, perhaps
                        self._scalar(event)
                        continue
                container, key, path = top.value, top.key, top.path
                line = event.start_mark.line + 1
                if type(container) is list:
                    if path is not None:
                        lines[path + (len(container),)] = line
                    container.append(value)
                elif key is _NO_KEY:
                    if value in container:  # a key given twice: `_key` reports it
                        self._scalar(event)
                        continue
                    if path is not None:
                        lines[path + (value,)] = line
                    top.key = value
                else:
                    top.key = _NO_KEY
                    if key is _MERGE:
                        top.merges.append((value, line))
                    elif key is not _SKIP:
                        container[key] = value
                self.nodes += 1
                if type(value) is str and "${" in value:
                    self.references = True
            elif kind is MappingStartEvent or kind is SequenceStartEvent:
                if event.tag is not None or event.anchor is not None or self.nodes >= max_nodes:
                    self._start(event)
                elif len(stack) >= max_depth:
                    raise _Refused(
                        f"the file is nested more than {max_depth} levels deep", event.start_mark.line + 1
                    )
                else:
                    self.nodes += 1
                    stack.append(
                        _Open(
                            {} if kind is MappingStartEvent else [],
                            self._child_path() if self.record_lines else None,
                            event.start_mark.line + 1,
                            None,
                            self.nodes - 1,
                        )
                    )
                top = stack[-1]
            elif kind is MappingEndEvent or kind is SequenceEndEvent:
                done = stack[-1]
                parent = stack[-2] if len(stack) > 1 else None
                if (
                    done.merges
                    or done.anchor is not None
                    or parent is None
                    or (parent.key is _NO_KEY and type(parent.value) is dict)
                ):
                    self._end()  # merges to apply, an anchor, the top, or a collection as a key
                else:
                    stack.pop()
                    height = done.tallest + 1
                    parent.tallest = max(parent.tallest, height)
                    container, key = parent.value, parent.key
                    if type(container) is list:
                        if parent.path is not None:
                            lines[parent.path + (len(container),)] = done.line
                        container.append(done.value)
                    else:
                        parent.key = _NO_KEY
                        if key is _MERGE:
                            parent.merges.append((done.value, done.line))
                        elif key is not _SKIP:
                            container[key] = done.value
                top = stack[-1] if stack else None
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

    def _count(self, nodes: int, line: int) -> None:
        self.nodes += nodes
        if self.nodes > self.max_nodes:
            if self.aliased:
                message = f"aliases expand too much: the file would hold over {self.max_nodes:,} values"
                raise _Refused(message, line)
            raise _Refused(f"the file has over {self.max_nodes:,} values", line)

    def _check_node(self, event: Any, line: int) -> None:
        """Refuse a foreign tag or a reused anchor, and count the node."""
        if event.tag is not None and event.tag not in ALLOWED_TAGS:
            tag = event.tag.replace(TAG_PREFIX, "!!", 1) if event.tag.startswith(TAG_PREFIX) else event.tag
            raise _Refused(f"tag {tag} is not allowed: a pipeline file is plain data; remove the tag", line)
        if event.anchor is not None:
            if event.anchor in self.started:
                raise _Refused(f"anchor &{event.anchor} is defined twice", line)
            self.started.add(event.anchor)
        self._count(1, line)

    def _scalar(self, event: ScalarEvent) -> None:
        line = event.start_mark.line + 1
        tag = event.tag
        if tag is None and event.anchor is None and self.nodes < self.max_nodes:
            self.nodes += 1  # the common case, inlined: this runs for every scalar of the file
        else:
            self._check_node(event, line)
        if tag is None and event.implicit[0]:
            try:
                value = plain(event.value)
            except ValueError:  # only a decimal integer too long to read
                self.problems.append(
                    (self._child_path() or (), line, too_many_digits(event.value, self.limits))
                )
                value = None
        elif tag is None or tag == "!":
            value = event.value  # quoted, or `!`: always a string
        else:
            try:
                value = construct(tag, event.value)
            except (ValueError, KeyError):
                shown = tag.replace(TAG_PREFIX, "!!")
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
        if len(self.open) >= self.max_depth:
            raise _Refused(f"the file is nested more than {self.max_depth} levels deep", line)
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
        if len(self.open) + height > self.max_depth:
            raise _Refused(
                f"alias *{event.anchor} nests the file more than {self.max_depth} levels deep", line
            )
        self._add(value, line, height)  # shared, not copied: interpolation copies everything anyway

    def _expects_key(self) -> bool:
        return bool(self.open) and type(self.open[-1].value) is dict and self.open[-1].key is _NO_KEY

    def _child_path(self) -> PathT | None:
        """The path of the node about to be added, None where no line is worth recording."""
        if not self.open:
            return () if self.record_lines else None
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
