"""Durations as people write them: `30s`, `5m`, `1h30m`, `1d`, `250ms`, or seconds."""

from __future__ import annotations

import math
import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_WHOLE = re.compile(r"^(?:\d+(?:\.\d+)?(?:ms|s|m|h|d|w))+$")


def parse_duration(value: object) -> float:
    """Return seconds for `value`; raise ValueError naming the accepted forms."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration")
    if isinstance(value, (int, float)):
        try:
            seconds = float(value)
        except OverflowError:  # an integer of hundreds of digits
            raise ValueError(f"{_shown(value)} is not a duration: it is far too large") from None
    elif isinstance(value, str):
        text = value.strip().replace(" ", "")
        if len(text) > 100:  # no real duration is this long; float() of it could be slow or overflow
            raise ValueError(f"{_shown(value)} is not a duration: it is {len(text):,} characters long")
        try:
            seconds = float(text)
        except ValueError:
            if not _WHOLE.match(text):
                raise ValueError(
                    f"{value!r} is not a duration: use seconds (90) or a number with a unit "
                    "(250ms, 30s, 5m, 1h, 1d, 1h30m)"
                ) from None
            seconds = sum(float(n) * _UNITS[u] for n, u in _PART.findall(text))
    else:
        raise ValueError(f"{_shown(value)} is not a duration")
    if seconds < 0 or not math.isfinite(seconds):
        raise ValueError(f"{_shown(value)} is not a duration: it must be a finite number >= 0")
    return seconds


def _shown(value: object) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return f"an integer of about {int(value.bit_length() * 0.30103) + 1:,} digits"
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:40]}... ({len(text):,} characters)"


def describe_seconds(seconds: float) -> str:
    """A limit for a person: `30 days`, `1h`, `60s`."""
    if seconds >= 86400 and seconds % 86400 == 0:
        days = seconds / 86400
        return f"{days:g} day{'s' if days != 1 else ''}"
    return format_duration(seconds)


def format_duration(seconds: float) -> str:
    """Short human form: 0.25s, 30s, 5m, 1h30m."""
    if seconds < 60:
        return f"{seconds:g}s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    out = (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes else "")
    return out + (f"{secs}s" if secs else "")
