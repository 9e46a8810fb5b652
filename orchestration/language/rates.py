"""Fleet-wide limits a pipeline file (or the settings) can set: rates, pools, concurrency keys.

- A rate is `N/s`, `N/min` or `N/h` (`RateLimit`): starts are spaced at least `interval_ms` apart
  (GCRA with a burst of 1), so no window of one period holds more than N starts.
- A pool (`PoolLimit`) has a size (stages holding it at once, across all runs and workers), a rate,
  or both. The file's `pools:` and CHORDFLOW_POOLS declare pools; where both declare one, the
  tighter of each field counts (`tighter_pool`), and likewise for `rate_limits:` and
  CHORDFLOW_RATE_LIMITS (`tighter_rate`).
- A stage's `concurrency_key` is a template whose `${params.NAME}` are filled from the stage's own
  params (`fill_key`): at most one stage per key value runs at once.

Pure: the engine admits stages against these (engine/limits.py); nothing here talks to Redis.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import (
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from orchestration.language.fields import Model, shown
from orchestration.language.ids import is_stage_id

if TYPE_CHECKING:
    from orchestration.settings import Settings

MAX_RATE_COUNT = 1_000_000
MAX_KEY_LENGTH = 200
RATE_FORMS = "N/s, N/min or N/h (also N/sec, N/second, N/m, N/minute, N/hour), N a whole number 1-1,000,000"

_UNITS = {
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "h": 3600.0,
    "hour": 3600.0,
}
_UNIT_TEXT = {1.0: "s", 60.0: "min", 3600.0: "h"}
_RATE = re.compile(r"\s*(\d+)\s*/\s*([A-Za-z]+)\s*")
_TYPE_NAME = re.compile(r"\A[A-Za-z0-9_][A-Za-z0-9_.:-]{0,199}\Z")
PARAM_REF = re.compile(r"\$\{params\.([A-Za-z_][A-Za-z0-9_]*)\}")
"""`${params.NAME}` in a concurrency key: the stage's own param NAME."""

_RATE_SCHEMA: dict[str, Any] = {
    "type": "string",
    "pattern": r"^\s*\d+\s*/\s*(s|sec|second|m|min|minute|h|hour)\s*$",
    "description": "N/s, N/min or N/h: starts spaced at least 1/rate apart",
}


def _rate_schema(schema: dict[str, Any]) -> None:
    whole = dict(schema)
    schema.clear()
    schema["anyOf"] = [_RATE_SCHEMA, whole]


def _pool_schema(schema: dict[str, Any]) -> None:
    whole = dict(schema)
    schema.clear()
    schema["anyOf"] = [{"type": "integer", "minimum": 1, "description": "shorthand for {size: N}"}, whole]


def parse_rate(text: Any) -> RateLimit:
    """`5/s`, `100/min`, `2/h` (whitespace tolerant) as a RateLimit; ValueError naming the forms."""
    match = _RATE.fullmatch(text) if isinstance(text, str) else None
    unit = _UNITS.get(match.group(2)) if match else None
    if match is None or unit is None:
        raise ValueError(f"{shown(text)} is not a rate: write {RATE_FORMS}")
    count = int(match.group(1))
    if not 1 <= count <= MAX_RATE_COUNT:
        raise ValueError(f"{shown(text)} is not a rate: the count must be 1-{MAX_RATE_COUNT:,}")
    return RateLimit(count=count, per_s=unit)


class RateLimit(Model):
    """At most `count` starts per `per_s` seconds (1, 60 or 3600), spaced `interval_ms` apart.
    Written (and read) as its text, `5/s`; a mapping {count, per_s} is read too."""

    model_config = ConfigDict(json_schema_extra=_rate_schema)

    count: int = Field(ge=1, le=MAX_RATE_COUNT, strict=True)
    per_s: float

    @model_validator(mode="before")
    @classmethod
    def _text(cls, data: Any) -> Any:
        if isinstance(data, str):
            rate = parse_rate(data)
            return {"count": rate.count, "per_s": rate.per_s}
        if not isinstance(data, (Mapping, RateLimit)):
            raise ValueError(f"{shown(data)} is not a rate: write {RATE_FORMS}")
        return data

    @field_validator("per_s")
    @classmethod
    def _period(cls, value: float) -> float:
        if value not in _UNIT_TEXT:
            raise ValueError(f"per_s must be 1, 60 or 3600 (a second, a minute or an hour), got {value!r}")
        return value

    @model_serializer(mode="wrap")
    def _as_text(self, handler: SerializerFunctionWrapHandler) -> Any:
        return self.text

    @property
    def interval_ms(self) -> float:
        """The least time between two starts, in milliseconds."""
        return self.per_s * 1000.0 / self.count

    @property
    def text(self) -> str:
        return f"{self.count}/{_UNIT_TEXT[self.per_s]}"


class PoolLimit(Model):
    """A named pool: at most `size` holders at once and/or starts at `rate`, fleet-wide.
    The file writes `N` (a size) or `{size: N, rate_limit: "R"}`."""

    model_config = ConfigDict(json_schema_extra=_pool_schema)

    size: int | None = Field(None, ge=1, strict=True)
    rate: RateLimit | None = Field(None, alias="rate_limit")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if isinstance(data, int) and not isinstance(data, bool):
            return {"size": data}
        if not isinstance(data, (Mapping, PoolLimit)):
            raise ValueError(
                f"{shown(data)} is not a pool: write a size (a whole number >= 1) "
                'or {size: N, rate_limit: "N/s"}'
            )
        if isinstance(data, Mapping) and isinstance(data.get("size"), bool):
            raise ValueError(f"size must be a whole number >= 1, got {shown(data['size'])}")
        return data

    @model_validator(mode="after")
    def _something(self) -> PoolLimit:
        if self.size is None and self.rate is None:
            raise ValueError("a pool needs a size, a rate_limit, or both")
        return self

    @model_serializer(mode="wrap")
    def _file_keys(self, handler: SerializerFunctionWrapHandler) -> Any:
        """Dumped with the file's key `rate_limit`, so a dump reads back as a file and as a graph."""
        data = handler(self)
        if isinstance(data, dict) and "rate" in data:
            data["rate_limit"] = data.pop("rate")
        return data


def _problem(error: ValidationError) -> str:
    """One line for a ValidationError of a small model (a setting's entry)."""
    parts = []
    for err in error.errors(include_url=False):
        where = ".".join(str(p) for p in err["loc"])
        msg = str(err["msg"]).removeprefix("Value error, ")
        parts.append(f"{where}: {msg}" if where else msg)
    return "; ".join(parts)


def pool_limit(value: Any) -> PoolLimit:
    """A pool from a size (an int, not a bool) or a mapping {size?, rate_limit?}; ValueError otherwise."""
    if isinstance(value, PoolLimit):
        return value
    try:
        return PoolLimit.model_validate(value)
    except ValidationError as exc:
        raise ValueError(_problem(exc)) from None


def tighter_rate(a: RateLimit | None, b: RateLimit | None) -> RateLimit | None:
    """The stricter of two rates (the longer interval); None is no limit."""
    if a is None:
        return b
    if b is None:
        return a
    return b if b.interval_ms > a.interval_ms else a


def tighter_pool(a: PoolLimit | None, b: PoolLimit | None) -> PoolLimit | None:
    """Two declarations of one pool merged field by field, the smaller winning; None is no limit."""
    if a is None:
        return b
    if b is None:
        return a
    sizes = [s for s in (a.size, b.size) if s is not None]
    size = min(sizes) if sizes else None
    rate = tighter_rate(a.rate, b.rate)
    if size == a.size and rate is a.rate:
        return a
    if size == b.size and rate is b.rate:
        return b
    return PoolLimit.model_construct(size=size, rate=rate)


def check_pool_name(name: Any) -> str:
    """`name` if it can name a pool (the rule of stage ids), else ValueError."""
    if not isinstance(name, str) or not is_stage_id(name):
        raise ValueError(
            f"pool name {shown(name)} must be 1-128 letters, digits, '_', '.' or '-', "
            "not starting with '.' or '-'"
        )
    return name


def check_type_name(name: Any) -> str:
    """`name` if it can name a stage type (`uses:`, e.g. `market.fetch` or `pkg.mod:func`), else ValueError."""
    if not isinstance(name, str) or not _TYPE_NAME.fullmatch(name):
        raise ValueError(
            f"stage type name {shown(name)} must be 1-200 letters, digits, '_', '.', ':' or '-', "
            "not starting with '.', ':' or '-'"
        )
    return name


def undeclared_pool(name: str) -> str:
    """The problem of a stage naming a pool that neither the file nor the settings declare."""
    return f"pool '{name}' is not declared (add it under pools: at the top of the file, or CHORDFLOW_POOLS)"


def key_params(template: str) -> list[str]:
    """The param names a concurrency key's `${params.NAME}` read, in order."""
    return PARAM_REF.findall(template) if "${" in template else []


def fill_key(template: str, params: Mapping[str, Any]) -> str:
    """A concurrency key with its `${params.NAME}` filled in (text as is, other values as JSON);
    ValueError naming what is wrong: a missing param, a bad reference, an empty, long or bad key."""
    if "${" in template:
        missing = [name for name in key_params(template) if name not in params]
        if missing:
            raise ValueError(
                f"concurrency_key {template!r} reads ${{params.{missing[0]}}}, and the stage's params "
                f"have no '{missing[0]}'"
            )
        key = PARAM_REF.sub(lambda m: _text(params[m.group(1)]), template)
        bad = re.search(r"\$\{params\.[^}]*\}?", PARAM_REF.sub("", template))
        if bad:
            raise ValueError(
                f"concurrency_key {template!r}: {bad.group(0)!r} is not a reference; "
                "write ${params.NAME} (a param of this stage) or ${NAME} (a variable)"
            )
    else:
        key = template
    if not key.strip():
        raise ValueError(f"concurrency_key {template!r} is empty once filled in")
    if len(key) > MAX_KEY_LENGTH:
        raise ValueError(
            f"concurrency_key {shown(key)} is {len(key):,} characters once filled in; "
            f"the limit is {MAX_KEY_LENGTH}"
        )
    if "|" in key or any(ord(ch) < 32 or ord(ch) == 127 for ch in key):
        raise ValueError(
            f"concurrency_key {shown(key)} may not contain '|' or control characters (newline, tab, ...)"
        )
    return key


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, default=str, ensure_ascii=False)


def settings_limits(settings: Settings) -> tuple[dict[str, PoolLimit], dict[str, RateLimit]]:
    """The pools (CHORDFLOW_POOLS) and per-type rates (CHORDFLOW_RATE_LIMITS) of `settings`;
    ValueError naming the setting and the entry on bad input."""
    pools: dict[str, PoolLimit] = {}
    for name, value in (settings.pools or {}).items():
        try:
            pools[check_pool_name(name)] = pool_limit(value)
        except ValueError as exc:
            raise ValueError(f"CHORDFLOW_POOLS: pool {shown(name)}: {exc}") from None
    rates: dict[str, RateLimit] = {}
    for type_name, text in (settings.rate_limits or {}).items():
        try:
            rates[check_type_name(type_name)] = parse_rate(text)
        except ValueError as exc:
            raise ValueError(f"CHORDFLOW_RATE_LIMITS: stage type {shown(type_name)}: {exc}") from None
    return pools, rates
