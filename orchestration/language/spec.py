"""The pipeline file as frozen pydantic models.

Checks on one field live here; checks across stages live in `validation.py`.
Keys that order-based tools use (`order`, `max_retries`, `continue_on_error`,
`metadata`, `error_handling`, ...) are accepted and mapped onto the canonical
fields before validation, so a loaded model always has one shape and
file → model → file → model is lossless.
"""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_serializer,
    model_validator,
)

from orchestration.language.durations import describe_seconds, parse_duration
from orchestration.language.ids import is_stage_id

if TYPE_CHECKING:
    from orchestration.settings import Settings


@dataclass(frozen=True)
class Limits:
    """What one pipeline file may ask for, checked when it is validated (docs/pipeline-file.md, "Limits").

    Built from the fleet's Settings (`Limits.from_settings`); the defaults are the settings' defaults.
    `validate_data`/`load_pipeline` pass it to the models as pydantic context (`{"limits": ...}`), so
    the limits apply to files and builders, never to a stored run graph read back.
    """

    max_stages: int = 20_000
    max_matrix_instances: int = 1_000
    max_fanout_items: int = 100_000
    max_duration_s: float = 30 * 86400.0
    max_integer: int = 2**53
    condition_max_steps: int = 10_000
    webhook_timeout_cap_s: float = 60.0

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(**{name: getattr(settings, name) for name in cls.__dataclass_fields__})


def limits_of(info: ValidationInfo | None) -> Limits | None:
    """The Limits a validation was given as context, None when it was given none (a stored graph)."""
    context = info.context if info is not None else None
    limits = context.get("limits") if isinstance(context, dict) else None
    return limits if isinstance(limits, Limits) else None


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


def _extend_schema(
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
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class Backoff(StrEnum):
    FIXED = "fixed"
    LINEAR = "linear"
    EXPONENTIAL = "exponential"


class RetryPolicy(Model):
    """How often and how soon a failed stage is tried again.

    `max_attempts` counts the first attempt: 3 means up to two retries.
    `retry_on` empty means every exception is retryable unless `give_up_on` names it.
    """

    max_attempts: int = Field(1, ge=1, le=1000)
    backoff: Backoff = Backoff.EXPONENTIAL
    delay: Duration = 1.0
    multiplier: float = Field(2.0, gt=0)
    max_delay: Duration | None = None
    jitter: bool = False
    retry_on: tuple[str, ...] = ()
    give_up_on: tuple[str, ...] = ()

    def merged_over(self, base: RetryPolicy) -> RetryPolicy:
        """This policy's explicitly set fields over `base`'s."""
        return base.model_copy(update={k: getattr(self, k) for k in self.model_fields_set})


class Resources(Model):
    """What one instance of a stage needs from its machine."""

    cpu: float | None = Field(None, gt=0)
    memory_gb: float | None = Field(None, gt=0)
    gpu: int = Field(0, ge=0)


class Cache(Model):
    """Reuse an earlier output with the same type, version, params and inputs."""

    ttl: Duration = 86400.0


class Fallback(Model):
    """Used when retries are exhausted: another stage type, a constant, or the last success."""

    uses: str | None = None
    output: Any = None
    last_success: bool = False

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if data == "last_success":
            return {"last_success": True}
        if isinstance(data, str):
            raise ValueError(
                f"fallback {data!r} is not understood: use 'last_success', "
                "{uses: TYPE} or {output: VALUE}"
            )
        return data

    @model_validator(mode="after")
    def _one_kind(self) -> Fallback:
        kinds = [self.uses is not None, "output" in self.model_fields_set, self.last_success]
        if sum(kinds) != 1:
            raise ValueError("a fallback is exactly one of: last_success, {uses: TYPE}, {output: VALUE}")
        return self

    @model_serializer(mode="wrap")
    def _one_key(self, handler: SerializerFunctionWrapHandler) -> Any:
        """Dumped as its one kind, whatever the dump leaves out: `{output: null}` is a constant
        fallback of null ("use null"), and its `output` is what makes it one, so it is written even
        by a dump without defaults (the stored RunGraph is dumped with `exclude_defaults`), and a
        `{uses: TYPE}` is never written with an `output: null` beside it. So every dump reads back."""
        data = handler(self)
        if not isinstance(data, dict):
            return data
        if self.last_success:
            return {"last_success": True}
        if self.uses is not None:
            return {"uses": data.get("uses", self.uses)}
        return {"output": data.get("output")}


def webhook_url_problem(url: str) -> str | None:
    """Why `url` cannot be a webhook (only http:// and https:// URLs with a host), or None.
    Validation refuses such a file; delivery checks again (hooks.refusal), for stored runs."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError as exc:
        return f"it is not a URL ({exc})"
    if parts.scheme.lower() not in ("http", "https"):
        return f"its scheme is {parts.scheme or 'missing'}, and only http:// and https:// are delivered"
    if not host:
        return "it names no host"
    return None


class Webhook(Model):
    """An HTTP POST of each matching event's JSON."""

    url: str
    events: tuple[str, ...] = ("run_complete",)
    timeout: Duration = 5.0
    headers: dict[str, str] = Field(default_factory=dict)
    include: tuple[Literal["traceback"], ...] = ()
    """What payloads carry beyond the default: `traceback` (left out unless included)."""

    @field_validator("url")
    @classmethod
    def _http_only(cls, value: str) -> str:
        why = webhook_url_problem(value)
        if why is not None:
            raise ValueError(f"{shown(value)} is not an http:// or https:// URL: {why}")
        return value

    @field_validator("timeout")
    @classmethod
    def _timeout_cap(cls, value: float, info: ValidationInfo) -> float:
        limits = limits_of(info)
        if limits is not None and value > limits.webhook_timeout_cap_s:
            raise ValueError(
                f"{describe_seconds(value)} is longer than the limit of "
                f"{describe_seconds(limits.webhook_timeout_cap_s)} "
                f"(webhook_timeout_cap_s = {limits.webhook_timeout_cap_s:g})"
            )
        return value


class LoggingConfig(Model):
    """Accepted from order-based files; the level applies to worker logs of the run."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    console: bool = True
    file: str | None = None
    format: str | None = None


def _retries_to_policy(retries: Any, delay: Any = None) -> dict[str, Any]:
    policy: dict[str, Any] = {}
    if retries is not None:
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"max_retries must be a whole number >= 0, got {retries!r}")
        policy["max_attempts"] = retries + 1
    if delay is not None:
        policy["delay"] = delay
    return policy


def _take_alias(data: dict[str, Any], alias: str, field: str, convert=lambda v: v) -> None:
    if alias not in data:
        return
    if field in data:
        raise ValueError(f"give either '{field}' or '{alias}', not both")
    data[field] = convert(data.pop(alias))


class Stage(Model):
    """One stage of a pipeline, as written in the file."""

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        json_schema_extra=_extend_schema(
            {
                "continue_on_error": {
                    "type": "boolean",
                    "description": "order-based files: critical = not this",
                },
                "parameters": {"type": "object", "description": "order-based files: params"},
                "condition": {"type": "string", "description": "order-based files: when"},
                "timeout_seconds": DURATION_SCHEMA,
                "max_retries": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "retries after the first attempt",
                },
                "retry_delay_seconds": DURATION_SCHEMA,
            },
            {"run": {"type": "string"}, "needs": {"type": "string"}, "fallback": {"const": "last_success"}},
        ),
    )

    id: str
    uses: str | None = None
    name: str | None = None
    description: str | None = None
    run: tuple[str, ...] | None = None
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    needs: tuple[str, ...] = ()
    order: int | None = None
    enabled: bool = True
    tags: tuple[str, ...] = ()
    for_each: str | None = None
    max_concurrency: int | None = Field(None, ge=1)
    matrix: dict[str, tuple[Any, ...]] | None = None
    resources: Resources | None = None
    queue: str | None = None
    retry: str | RetryPolicy | None = None
    timeout: Duration | None = None
    when: str | None = None
    critical: bool = True
    fallback: Fallback | None = None
    cache: Cache | None = None
    estimate: Duration | None = None

    @model_validator(mode="before")
    @classmethod
    def _compat(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if "continue_on_error" in data:
            if "critical" in data:
                raise ValueError("give either 'critical' or 'continue_on_error', not both")
            value = data.pop("continue_on_error")
            if not isinstance(value, bool):
                raise ValueError(f"continue_on_error must be true or false, got {value!r}")
            data["critical"] = not value
        _take_alias(data, "parameters", "params")
        _take_alias(data, "condition", "when")
        _take_alias(data, "timeout_seconds", "timeout")
        if "max_retries" in data or "retry_delay_seconds" in data:
            if "retry" in data:
                raise ValueError("give either 'retry' or 'max_retries'/'retry_delay_seconds', not both")
            data["retry"] = _retries_to_policy(
                data.pop("max_retries", None), data.pop("retry_delay_seconds", None)
            )
        if isinstance(data.get("run"), str):
            data["run"] = shlex.split(data["run"])
        if isinstance(data.get("run"), (list, tuple)):
            data["run"] = [as_text(arg) for arg in data["run"]]
        if isinstance(data.get("env"), dict):
            data["env"] = {name: as_text(value) for name, value in data["env"].items()}
        if isinstance(data.get("needs"), str):
            data["needs"] = [data["needs"]]
        return data

    @field_validator("id")
    @classmethod
    def _id_shape(cls, value: str) -> str:
        if not is_stage_id(value):
            raise ValueError(
                f"stage id {value!r} must be 1-128 letters, digits, '_', '.' or '-', "
                "not starting with '.' or '-'"
            )
        return value

    @field_validator("run")
    @classmethod
    def _run_not_empty(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None and not value:
            raise ValueError("run must name a command")
        return value

    @field_validator("matrix")
    @classmethod
    def _matrix_shape(cls, value: dict[str, tuple[Any, ...]] | None) -> dict[str, tuple[Any, ...]] | None:
        if value is not None:
            if not value:
                raise ValueError("matrix must have at least one axis")
            for axis, values in value.items():
                if not values:
                    raise ValueError(f"matrix axis '{axis}' has no values")
        return value

    @field_validator("max_concurrency")
    @classmethod
    def _concurrency_cap(cls, value: int | None, info: ValidationInfo) -> int | None:
        limits = limits_of(info)
        if value is not None and limits is not None and value > limits.max_fanout_items:
            raise ValueError(
                f"{shown(value)} is more than the limit of {limits.max_fanout_items:,} "
                "(max_fanout_items): no fan-out can have that many items at once"
            )
        return value

    @model_validator(mode="after")
    def _one_fan_out(self) -> Stage:
        if self.matrix is not None and self.for_each is not None:
            raise ValueError("a stage has either matrix or for_each, not both (split it into two stages)")
        if self.max_concurrency is not None and self.matrix is None and self.for_each is None:
            raise ValueError("max_concurrency applies only to a stage with for_each or matrix")
        return self

    @property
    def type_name(self) -> str:
        """The registered stage type this stage runs: `uses`, or `shell` for a `run`, else its id."""
        if self.uses:
            return self.uses
        return "shell" if self.run is not None else self.id


class Defaults(Model):
    """Settings applied to every stage that does not say otherwise."""

    retry: str | RetryPolicy | None = None
    timeout: Duration | None = None
    queue: str | None = None
    resources: Resources | None = None
    estimate: Duration | None = None


class PipelineSpec(Model):
    """A whole pipeline file."""

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        json_schema_extra=_extend_schema(
            {
                "metadata": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "name": {"type": "string"},
                        "version": {"type": ["string", "number"]},
                        "description": {"type": "string"},
                        "author": {"type": "string"},
                        "tags": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "error_handling": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "continue_on_error": {"type": "boolean"},
                        "retry_count": {"type": "integer", "minimum": 0},
                        "retry_delay": DURATION_SCHEMA,
                    },
                },
                "retry": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "max_retries": {"type": "integer", "minimum": 0},
                        "delay_seconds": DURATION_SCHEMA,
                        "exponential_backoff": {"type": "boolean"},
                        "backoff_multiplier": {"type": "number"},
                        "max_delay_seconds": DURATION_SCHEMA,
                    },
                },
            },
            {"version": {"type": "number"}},
            {"name": "metadata"},
        ),
    )

    name: str = Field(min_length=1, max_length=200)
    version: str = "0"
    description: str | None = None
    author: str | None = None
    tags: tuple[str, ...] = ()
    variables: dict[str, Any] = Field(default_factory=dict)
    defaults: Defaults = Field(default_factory=Defaults)
    retry_policies: dict[str, RetryPolicy] = Field(default_factory=dict)
    fail_fast: bool = True
    schedule: str | None = None
    max_age: Duration | None = None
    webhooks: tuple[Webhook, ...] = ()
    logging: LoggingConfig | None = None
    stages: tuple[Stage, ...] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _compat(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        meta = data.pop("metadata", None)
        if meta is not None:
            if not isinstance(meta, dict):
                raise ValueError("metadata must be a mapping (name, version, description, author, tags)")
            unknown = set(meta) - {"name", "version", "description", "author", "tags"}
            if unknown:
                raise ValueError(f"metadata has unknown keys: {', '.join(sorted(unknown))}")
            for key, value in meta.items():
                if key in data:
                    raise ValueError(f"'{key}' is given both at the top level and in metadata")
                data[key] = value
        if isinstance(data.get("version"), (int, float)) and not isinstance(data.get("version"), bool):
            data["version"] = str(data["version"])
        defaults = dict(data.get("defaults") or {})
        handling = data.pop("error_handling", None)
        if handling is not None:
            if not isinstance(handling, dict):
                raise ValueError(
                    "error_handling must be a mapping (continue_on_error, retry_count, retry_delay)"
                )
            unknown = set(handling) - {"continue_on_error", "retry_count", "retry_delay"}
            if unknown:
                raise ValueError(f"error_handling has unknown keys: {', '.join(sorted(unknown))}")
            if "continue_on_error" in handling:
                if "fail_fast" in data:
                    raise ValueError(
                        "give either 'fail_fast' or 'error_handling.continue_on_error', not both"
                    )
                data["fail_fast"] = not handling["continue_on_error"]
            policy = _retries_to_policy(handling.get("retry_count"), handling.get("retry_delay"))
            if policy:
                defaults["retry"] = {**(defaults.get("retry") or {}), **policy}
        retry = data.pop("retry", None)
        if retry is not None:
            if not isinstance(retry, dict):
                raise ValueError(
                    "the top-level retry block must be a mapping (max_retries, delay_seconds, ...)"
                )
            unknown = set(retry) - {
                "max_retries",
                "delay_seconds",
                "exponential_backoff",
                "backoff_multiplier",
                "max_delay_seconds",
            }
            if unknown:
                raise ValueError(f"the top-level retry block has unknown keys: {', '.join(sorted(unknown))}")
            policy = _retries_to_policy(retry.get("max_retries"), retry.get("delay_seconds"))
            if "exponential_backoff" in retry:
                policy["backoff"] = "exponential" if retry["exponential_backoff"] else "fixed"
            if "backoff_multiplier" in retry:
                policy["multiplier"] = retry["backoff_multiplier"]
            if "max_delay_seconds" in retry:
                policy["max_delay"] = retry["max_delay_seconds"]
            base = defaults.get("retry")
            if isinstance(base, str):
                raise ValueError("defaults.retry names a policy; the top-level retry block can't add to it")
            defaults["retry"] = {**(base or {}), **policy}
        if defaults:
            data["defaults"] = defaults
        return data

    def stage(self, stage_id: str) -> Stage:
        for stage in self.stages:
            if stage.id == stage_id:
                return stage
        raise KeyError(stage_id)
