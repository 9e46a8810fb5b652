"""What every `--json` prints: the values made plain (`typed`) and written as text (`document`,
`line`), the one encoder of the command line.

`document` is `json.dumps(typed(data), indent=2, ensure_ascii=False)` in one pass: with an indent
the standard library writes in Python, a generator per container, and a 10,000-stage plan took
a quarter of a second to type and write that way.
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime
from json.encoder import encode_basestring
from typing import Any

# keys whose number is a time (epoch s): `*_at`, and these
TIME_KEYS = frozenset({"t", "at", "tick", "seen", "first", "last"})

_C1 = {code: f"\\u{code:04x}" for code in range(0x7F, 0xA0)}
_HAS_C1 = re.compile("[\x7f-\x9f]")


def escape_c1(text: str) -> str:
    # the search is one C-speed scan; str.translate with a dict walks a 5 MB plan in Python
    return text.translate(_C1) if _HAS_C1.search(text) else text


def typed(data: Any) -> Any:
    """`data` as every `--json` prints it: a number under a time key (`*_at`, TIME_KEYS) as an
    ISO 8601 time in UTC, a datetime too, a float that is not finite as null, tuples and sets as
    lists. Numbers stay numbers, None stays null. (Plain values are copied without a call: a
    10,000-stage plan has 200,000 of them.)"""
    if isinstance(data, dict):
        out = {}
        for key, value in data.items():
            if value is None or isinstance(value, str | bool):
                out[key] = value
            elif isinstance(value, int | float):
                out[key] = _number(value, _timed(key))
            else:
                out[key] = typed(value)
        return out
    if isinstance(data, list | tuple | set | frozenset):
        items = sorted(data, key=str) if isinstance(data, set | frozenset) else data
        return [v if v is None or isinstance(v, str | bool | int) else typed(v) for v in items]
    if isinstance(data, float):
        return _number(data, False)
    if isinstance(data, datetime):
        return _iso(data.timestamp())
    return data


def _timed(key: Any) -> bool:
    return isinstance(key, str) and (key in TIME_KEYS or key.endswith("_at"))


def _number(value: float, timed: bool) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return _iso(float(value)) if timed else value


def _iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def line(data: Any) -> str:
    """`data`, typed, as one line of JSON (a stream: `logs --json`, `watch --json`)."""
    return escape_c1(json.dumps(typed(data), ensure_ascii=False, separators=(",", ":")))


def document(data: Any) -> str:
    """`data`, typed, as JSON indented by two spaces: what `json.dumps(typed(data), indent=2,
    ensure_ascii=False)` writes, character for character, DEL and C1 controls escaped too."""
    try:
        text = _Writer().write(data)
    except (_Unusual, RecursionError):  # a value JSON can't hold, or a cycle: the library's error
        text = json.dumps(typed(data), indent=2, ensure_ascii=False)
    return escape_c1(text)


class _Unusual(Exception):
    """A value `document` leaves to the json module (which refuses it)."""


class _Writer:
    """Types and writes in one walk; each branch does what `typed` and then json.dumps do. The
    common plain values (exact str, int, float, None, bool) take the first branches."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        # pad -> str key -> (`,` newline, indent, `"key": `) and whether it is a time key: worked
        # out once, every stage has the same keys (the first entry's `,` becomes the `{`)
        self.heads: dict[str, dict[str, tuple[str, bool]]] = {}
        # A mapping met again (a plan's stages share a few retry policies) is written as before:
        # id -> (pad, first part, end part) of its first writing, and its text once asked again.
        # (The data outlives the walk, so an id names one mapping throughout.)
        self.spans: dict[int, tuple[str, int, int]] = {}
        self.texts: dict[int, str] = {}

    def write(self, data: Any) -> str:
        self.value(data, "\n")
        return "".join(self.parts)

    def value(self, v: Any, pad: str) -> None:
        """A value at the top or in a list (`pad`: a newline and the indent of its line)."""
        add = self.parts.append
        if isinstance(v, dict):
            self.mapping(v, pad)
        elif isinstance(v, (list, tuple, set, frozenset)):
            if not v:
                add("[]")
                return
            items = sorted(v, key=str) if isinstance(v, (set, frozenset)) else v
            inner = pad + "  "
            sep = "[" + inner
            for item in items:
                kind = type(item)
                if kind is str:
                    add(sep + encode_basestring(item))
                elif kind is int:
                    add(sep + int.__repr__(item))
                elif item is None or isinstance(item, (int, str)):  # typed keeps ints, even of times
                    add(sep + _scalar(item))
                else:
                    add(sep)
                    self.value(item, inner)
                sep = "," + inner
            add(pad + "]")
        elif isinstance(v, float):
            add(_scalar(_number(v, False)))
        elif v is None or isinstance(v, (str, int)):
            add(_scalar(v))
        elif isinstance(v, datetime):
            add(encode_basestring(_iso(v.timestamp())))
        else:
            raise _Unusual

    def mapping(self, v: dict[Any, Any], pad: str) -> None:
        add = self.parts.append
        if not v:
            add("{}")
            return
        span = self.spans.get(id(v))
        if span is not None and span[0] == pad:
            text = self.texts.get(id(v))
            if text is None:
                text = self.texts[id(v)] = "".join(self.parts[span[1] : span[2]])
            add(text)
            return
        start = len(self.parts)
        inner = pad + "  "
        heads = self.heads.get(pad)
        if heads is None:
            heads = self.heads[pad] = {}
        for key, item in v.items():
            known = heads.get(key) if type(key) is str else None
            if known is None:
                known = ("," + inner + _key(key) + ": ", _timed(key))
                if type(key) is str:
                    heads[key] = known
            head, timed = known
            kind = type(item)
            if kind is str:
                add(head + encode_basestring(item))
            elif item is None:
                add(head + "null")
            elif kind is bool:
                add(head + ("true" if item else "false"))
            elif (kind is int or kind is float) and not timed and item - item == 0:  # finite
                add(head + (int.__repr__(item) if kind is int else float.__repr__(item)))
            elif isinstance(item, (str, bool)):
                add(head + _scalar(item))
            elif isinstance(item, (int, float)):
                add(head + _scalar(_number(item, timed)))
            else:
                add(head)
                self.value(item, inner)
        self.parts[start] = "{" + self.parts[start][1:]
        add(pad + "}")
        if span is None:
            self.spans[id(v)] = (pad, start, len(self.parts))


def _scalar(v: Any) -> str:
    """A plain value as json.dumps writes it (typed makes every float it lets through finite)."""
    if isinstance(v, str):
        return encode_basestring(v)
    if v is None:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, int):
        return int.__repr__(v)
    return _float(v)


def _float(v: float) -> str:
    if math.isnan(v):
        return "NaN"
    if v == math.inf:
        return "Infinity"
    if v == -math.inf:
        return "-Infinity"
    return float.__repr__(v)


def _key(key: Any) -> str:
    """A mapping key as json.dumps writes it: text, or a number, true, false or null quoted."""
    if isinstance(key, str):
        return encode_basestring(key)
    if isinstance(key, float):
        return f'"{_float(key)}"'
    if key is True or key is False or key is None:
        return f'"{_scalar(key)}"'
    if isinstance(key, int):
        return f'"{int.__repr__(key)}"'
    raise _Unusual
