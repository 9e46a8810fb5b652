"""One typed settings object, from the environment (`CHORDFLOW_*`) or a config file.

`CHORDFLOW_CONFIG=path.yaml` names an optional file of the same keys; the
environment wins over the file. Built once at the edge (CLI, worker start) and
passed in; nothing reads the environment after that.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CHORDFLOW_", extra="ignore", frozen=True)

    redis_url: str | None = Field(None, description="redis:// or rediss:// URL; unset means an embedded Redis")
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
    result_backend: str | None = Field(None, description="only for plain Celery tasks beside ours (benchmarks)")
    ssl_cert_reqs: str = "required"
    ssl_ca_certs: str | None = Field(None, description="CA bundle that signed the rediss:// server's certificate")
    hook_timeout_s: float = Field(10.0, description="a Python hook is waited for this long, then left running")
    webhook_total_s: float = Field(60.0, description="one webhook delivery is retried for at most this long")
    hook_claim_idle_s: float = Field(
        120.0, description="an event a hook sender took and has not touched this long is taken over by another")

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
