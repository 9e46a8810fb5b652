"""The pipeline file as frozen pydantic models: a pipeline and its stages.

Checks on one field live here (the blocks a stage carries, in `options.py`); checks across
stages live in `validation.py`. Keys that order-based tools use (`order`, `max_retries`,
`continue_on_error`, `metadata`, `error_handling`, ...) are accepted and mapped onto the
canonical fields before validation, so a loaded model always has one shape and
file → model → file → model is lossless.
"""

from __future__ import annotations

import shlex
from typing import Any

from pydantic import ConfigDict, Field, ValidationInfo, field_validator, model_validator

from orchestration.language.fields import DURATION_SCHEMA, Duration, Model, as_text, extend_schema, shown
from orchestration.language.ids import is_stage_id
from orchestration.language.limits import limits_of
from orchestration.language.options import (
    AssetRequirement,
    Cache,
    Fallback,
    LoggingConfig,
    PipelineDependency,
    Resources,
    RetryPolicy,
    Trigger,
    Webhook,
    check_asset_name,
)
from orchestration.language.rates import PoolLimit, RateLimit, check_pool_name, check_type_name


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
        json_schema_extra=extend_schema(
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
                "inputs": {
                    "anyOf": [{"type": "array", "items": {"type": "string"}}, {"type": "string"}],
                    "description": "another name for needs",
                },
            },
            {
                "run": {"type": "string"},
                "needs": {"type": "string"},
                "fallback": {"const": "last_success"},  # not a state
            },
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
    pool: str | None = None
    concurrency_key: str | None = Field(None, min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _compat(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        _take_alias(data, "inputs", "needs")
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

    @field_validator("pool")
    @classmethod
    def _pool_name(cls, value: str | None) -> str | None:
        return None if value is None else check_pool_name(value)

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
        json_schema_extra=extend_schema(
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
    depends_on: tuple[PipelineDependency, ...] = ()
    requires: tuple[AssetRequirement, ...] = ()
    provides: tuple[str, ...] = ()
    triggers: tuple[Trigger, ...] = ()
    webhooks: tuple[Webhook, ...] = ()
    logging: LoggingConfig | None = None
    pools: dict[str, PoolLimit] = Field(default_factory=dict)
    rate_limits: dict[str, RateLimit] = Field(default_factory=dict)
    max_parallel: int | None = Field(None, ge=1, strict=True)
    stages: tuple[Stage, ...] = Field(min_length=1)

    @field_validator("pools", "rate_limits", mode="before")
    @classmethod
    def _limit_names(cls, value: Any, info: ValidationInfo) -> Any:
        check = check_pool_name if info.field_name == "pools" else check_type_name
        for name in value if isinstance(value, dict) else ():
            check(name)
        return value

    @field_validator("provides")
    @classmethod
    def _asset_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(check_asset_name(name) for name in value)

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
