"""The value of a plain YAML scalar, by YAML 1.2's core schema (as JSON and most tools today read it).

Not PyYAML's YAML 1.1: only true/false are booleans (`on:` and `country: NO` stay strings),
1e-3 is a float, and 2024-01-01, 1:30 and 0755-style octals are not dates, times or octals.
"""

from __future__ import annotations

import functools
import re
from typing import Any

from orchestration.language.limits import Limits

MAX_DIGITS = 1000  # an integer written longer is refused unread (int() refuses 4,300 decimal digits)

TAG_PREFIX = "tag:yaml.org,2002:"
STR, INT, FLOAT, BOOL, NULL, SEQ, MAP = (
    TAG_PREFIX + t for t in ("str", "int", "float", "bool", "null", "seq", "map")
)
ALLOWED_TAGS = {None, "!", STR, INT, FLOAT, BOOL, NULL, SEQ, MAP}

# the typed plain scalars of the core schema, tried in order; any other is text
_IMPLICIT = [
    (NULL, re.compile(r"~|null|Null|NULL|")),
    (BOOL, re.compile(r"true|True|TRUE|false|False|FALSE")),
    (INT, re.compile(r"[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+")),
    (
        FLOAT,
        re.compile(
            r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?|[-+]?\.(inf|Inf|INF)|\.(nan|NaN|NAN)"
        ),
    ),
]
_MAYBE_TYPED = re.compile(r"[-+.0-9~nNtTfF]|\Z")  # the first characters that any of these allow


@functools.lru_cache(maxsize=4096)  # files repeat most plain values: `noop`, `1`, `true`
def plain(text: str) -> Any:
    """The value of an untagged, unquoted scalar: null, bool, int, float or the text itself."""
    if _MAYBE_TYPED.match(text):
        for tag, pattern in _IMPLICIT:
            if pattern.fullmatch(text):
                return construct(tag, text)
    return text


def construct(tag: str, text: str) -> Any:
    """The value of `text` as `tag`; ValueError or KeyError if it is not one."""
    if tag == STR:
        return text
    if tag == NULL:
        return None
    if tag == BOOL:
        return {"true": True, "false": False}[text.lower()]
    if tag == INT:
        base = {"0o": 8, "0x": 16}.get(text[:2].lower(), 10)
        if len(text) > MAX_DIGITS:  # int() of it would refuse or be slow; no file needs such a number
            raise ValueError(text)
        return int(text[2:] if base != 10 else text, base)
    if tag == FLOAT:
        if text.lower().lstrip("+-") in (".inf", ".nan"):
            text = text.replace(".", "", 1)
        return float(text)
    raise ValueError(tag)  # !!seq or !!map on a scalar


def too_many_digits(text: str, limits: Limits) -> str:
    return (
        f"an integer of {len(text.lstrip('+-')):,} digits is too large: integers may be at most "
        f"{limits.max_integer:,} (max_integer)"
    )
