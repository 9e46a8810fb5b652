"""One typed settings object, from the environment (`CHORDFLOW_*`) or a config file.

`CHORDFLOW_CONFIG=path.yaml` names an optional file of the same keys; the
environment wins over the file. Built once at the edge (CLI, worker start) and
passed in; nothing reads the environment after that.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CHORDFLOW_", extra="ignore", frozen=True)

    redis_url: str | None = Field(
        None, description="redis:// or rediss:// URL; unset means an embedded Redis"
    )
    key_prefix: str = "chordflow"
    queues: tuple[str, ...] = ("cpu", "gpu", "highmem")
    cpu_queue: str = "cpu"
    gpu_queue: str = "gpu"
    highmem_queue: str = "highmem"
    highmem_threshold_gb: float = 16.0
    output_cap_bytes: int = 1024 * 1024
    run_ttl_s: float = 7 * 86400.0
    lease_s: float = 15.0
    heartbeat_s: float = 3.0
    max_deliveries: int = 5
    visibility_timeout_s: float = 3600.0
    delay_set_threshold_s: float = 3.0
    chain_segment: int = 50
    worker_ttl_s: float = 30.0
    outbox_grace_s: float = Field(10.0, description="a ready stage unsent this long is sent by the reaper")
    flower_basic_auth: str | None = None
    imports: tuple[str, ...] = ()
    result_backend: str | None = Field(
        None, description="only for plain Celery tasks beside ours (benchmarks)"
    )
    ssl_cert_reqs: str = "required"
    ssl_ca_certs: str | None = Field(
        None, description="CA bundle that signed the rediss:// server's certificate"
    )
    hook_timeout_s: float = Field(
        10.0, description="a Python hook is waited for this long, then left running"
    )
    webhook_total_s: float = Field(60.0, description="one webhook delivery is retried for at most this long")
    hook_claim_idle_s: float = Field(
        120.0,
        description="an event a hook sender took and has not touched this long is taken over by another",
    )

    # -- what a pipeline file can make a worker do (docs/security.md) ------------------------------
    shell_enabled: bool = Field(
        True, description="false: the `shell` built-in fails every stage that uses it"
    )
    shell_allow: Annotated[tuple[str, ...], NoDecode] = Field(
        (), description="programs `shell` may run (argv[0], by name or absolute path); empty means any"
    )
    stage_env_pass: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description="worker environment variables passed to stage processes although they are "
        "withheld by default (every CHORDFLOW_* variable is withheld)",
    )
    shell_timeout_s: float = Field(3600.0, description="a shell stage's timeout when the file sets none")
    shell_output_tail_lines: int = Field(200, description="lines of a shell stage's stdout/stderr kept")
    shell_output_tail_bytes: int = Field(64 * 1024, description="bytes of a shell stage's stdout/stderr kept")
    log_lines_cap: int = Field(10_000, description="log lines kept per attempt; the rest are counted")

    # -- limits checked when a file is validated ----------------------------------------------------
    max_stages: int = Field(20_000, description="stages in one pipeline, after matrix expansion")
    max_matrix_instances: int = Field(1_000, description="instances of one matrix stage")
    max_fanout_items: int = Field(100_000, description="items of one for_each stage (checked when it starts)")
    fanout_chunk: int = Field(
        8, ge=1, le=1000, description="consecutive fan-out items one message carries at most (1: one each)"
    )
    max_duration_s: float = Field(30 * 86400.0, description="the longest duration a file may give")
    max_integer: int = Field(2**53, description="the largest integer magnitude a file may give")
    condition_max_steps: int = Field(10_000, description="evaluation steps one `when:` may take")

    # -- limits at run time ------------------------------------------------------------------------------
    context_value_cap_bytes: int = Field(1024 * 1024, description="JSON size of one shared context value")
    fanout_output_cap_bytes: int = Field(
        16 * 1024 * 1024, description="JSON size of a fan-out stage's assembled output"
    )
    webhook_timeout_cap_s: float = Field(60.0, description="the longest `timeout` a webhook may have")
    redis_timeout_s: float = Field(5.0, description="CLI commands give up on an unreachable Redis after this")

    @field_validator("shell_allow", "stage_env_pass", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        """`CHORDFLOW_SHELL_ALLOW=echo,seq` as well as a JSON list or a list in the config file."""
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return tuple(part.strip() for part in text.split(",") if part.strip())
        return value

    @classmethod
    def load(cls, **overrides: Any) -> Settings:
        """Settings from CHORDFLOW_CONFIG's file (if any), the environment, then `overrides`."""
        file_values: dict[str, Any] = {}
        path = os.environ.get("CHORDFLOW_CONFIG")
        if path:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
            if not isinstance(loaded, dict):
                raise ValueError(f"{path}: the config file must be a mapping of settings")
            file_values = {k: v for k, v in loaded.items() if f"CHORDFLOW_{k.upper()}" not in os.environ}
        return cls(**{**file_values, **{k: v for k, v in overrides.items() if v is not None}})
