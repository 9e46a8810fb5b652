"""What the pipeline file's models share: their base class, the `Duration` field type, and how a
value is shown in a problem line."""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo, WithJsonSchema

from orchestration.language.durations import describe_seconds, parse_duration
from orchestration.language.limits import limits_of


def _bounded_duration(value: Any, info: ValidationInfo) -> float:
    seconds = parse_duration(value)
    limits = limits_of(info)
    if limits is not None and seconds > limits.max_duration_s:
        raise ValueError(
            f"{shown(value)} is longer than the limit of {describe_seconds(limits.max_duration_s)} "
            f"(max_duration_s = {limits.max_duration_s:g})"
        )
    return seconds


def shown(value: Any, width: int = 40) -> str:
    """`value` for a problem line, cut short: a 100,000-digit integer must not fill the terminal."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        digits = int(value.bit_length() * math.log10(2)) + 1  # str() of a huge int may itself refuse
        return f"an integer of about {digits:,} digits"
    text = (
        {True: "true", False: "false", None: "null"}.get(value, None)
        if value is None or isinstance(value, bool)
        else repr(value)
    )
    assert text is not None
    return text if len(text) <= width else f"{text[:width]}... ({len(text):,} characters)"


def as_text(value: Any) -> Any:
    """A number where text is expected (`run: [seq, 1]`, `env: {A: 1}`) becomes its text, as GitHub
    Actions and docker compose do; true/false/null, lists and mappings are left for validation to refuse."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if isinstance(value, float) and not math.isfinite(value):
            return value
        if isinstance(value, int) and value.bit_length() > 128:
            return value  # left for the max_integer check to refuse
        return str(value)
    return value


DURATION_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "number", "minimum": 0},
        {"type": "string", "pattern": r"^\s*(\d+(\.\d+)?\s*(ms|s|m|h|d|w)?\s*)+$"},
    ],
    "description": "seconds, or a number with a unit: 250ms, 30s, 5m, 1h, 1d, 1h30m",
}
Duration = Annotated[float, BeforeValidator(_bounded_duration), Field(ge=0), WithJsonSchema(DURATION_SCHEMA)]
"""Seconds; the file may say `30s`, `5m`, `1h` or a number (at most Limits.max_duration_s when validated)."""


def extend_schema(
    extra: dict[str, Any], shorthands: dict[str, Any] | None = None, required_in: dict[str, str] | None = None
):
    """Describe in the JSON Schema what the before-validators accept: compatibility keys and shorthands.

    `required_in` names required fields that may come from a block instead (name from metadata).
    """

    def patch(schema: dict[str, Any]) -> None:
        for name, block in (required_in or {}).items():
            if name in schema.get("required", []):
                schema["required"].remove(name)
                schema["anyOf"] = [{"required": [name]}, {"required": [block]}]
        properties = schema.setdefault("properties", {})
        properties.update(extra)
        for name, alternative in (shorthands or {}).items():
            if name in properties:
                properties[name] = {"anyOf": [properties[name], alternative]}

    return patch


class Model(BaseModel):
    """The base of every model of the pipeline file: frozen, and refusing unknown keys."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)
