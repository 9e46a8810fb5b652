"""The blocks a stage or a pipeline carries: retry policy, resources, cache, fallback, webhook, logging,
and a pipeline's links to other pipelines (depends_on, requires, triggers)."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from orchestration.language.durations import describe_seconds
from orchestration.language.fields import Duration, Model, shown
from orchestration.language.limits import limits_of


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
    """Used when retries are exhausted: another stage type (with its own `params`), a constant, or
    the last success's output (with a `default` for when no earlier run succeeded)."""

    uses: str | None = None
    params: dict[str, Any] | None = None  # the `uses` type's own params (none: it gets none)
    output: Any = None
    last_success: bool = False
    default: Any = None  # with last_success: the output when no earlier run has one

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
        if self.params is not None and self.uses is None:
            raise ValueError("a fallback's params go with {uses: TYPE}")
        if "default" in self.model_fields_set and not self.last_success:
            raise ValueError("a fallback's default goes with {last_success: true}")
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
            kept = {"last_success": True}
            return {**kept, "default": self.default} if "default" in self.model_fields_set else kept
        if self.uses is not None:
            used: dict[str, Any] = {"uses": data.get("uses", self.uses)}
            return {**used, "params": self.params} if self.params is not None else used
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


ASSET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/-]{0,199}")


def check_asset_name(value: Any) -> str:
    """`value` if it can name an asset (what `provides` and `requires` name), else ValueError."""
    if not isinstance(value, str) or not ASSET_NAME.fullmatch(value):
        raise ValueError(
            f"asset name {shown(value)} must be 1-200 letters, digits, '_', '.', ':', '/' or '-', "
            "starting with a letter or digit"
        )
    return value


def _or_name(key: str) -> Any:
    """Read a bare name as `{key: name}`, and say so in the JSON Schema."""

    def before(data: Any) -> Any:
        return {key: data} if isinstance(data, str) else data

    def schema(schema: dict[str, Any]) -> None:
        whole = dict(schema)
        schema.clear()
        schema["anyOf"] = [whole, {"type": "string", "description": f"shorthand for {{{key}: NAME}}"}]

    return before, schema


_DEPENDENCY = _or_name("pipeline")
_REQUIREMENT = _or_name("asset")


class PipelineDependency(Model):
    """A pipeline this one needs: its last finished run must have succeeded, within `max_age`
    (else within that pipeline's own registered `max_age`, if it has one)."""

    model_config = ConfigDict(json_schema_extra=_DEPENDENCY[1])

    pipeline: str = Field(min_length=1, max_length=200)
    max_age: Duration | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return _DEPENDENCY[0](data)


class AssetRequirement(Model):
    """An asset this pipeline needs: a successful run must have provided it, within `max_age`
    (else within the `max_age` of the registered pipelines that provide it, if they have one)."""

    model_config = ConfigDict(json_schema_extra=_REQUIREMENT[1])

    asset: str
    max_age: Duration | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return _REQUIREMENT[0](data)

    @field_validator("asset")
    @classmethod
    def _asset_name(cls, value: str) -> str:
        return check_asset_name(value)


class Trigger(Model):
    """Submit this pipeline once for each successful run of `on_success_of`."""

    on_success_of: str = Field(min_length=1, max_length=200)


class LoggingConfig(Model):
    """Accepted from order-based files; the level applies to worker logs of the run."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    console: bool = True
    file: str | None = None
    format: str | None = None
