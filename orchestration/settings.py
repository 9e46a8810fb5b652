"""One typed settings object, from the environment (`CHORDFLOW_*`) or a config file.

`CHORDFLOW_CONFIG=path.yaml` names an optional file of the same keys; the
environment wins over the file. Built once at the edge (CLI, worker start) and
passed in; nothing reads the environment after that.
"""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import Field, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

#: The most consecutive fan-out items one message may carry (a worker refuses a message with more).
FANOUT_CHUNK_MAX = 1000


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CHORDFLOW_", extra="ignore", frozen=True)

    redis_url: str | None = Field(
        None, description="redis:// or rediss:// URL; unset means an embedded Redis"
    )
    key_prefix: str = Field("chordflow", description="prefix of every Redis key Chordflow writes")
    queues: tuple[str, ...] = Field(("cpu", "gpu", "highmem"), description="the queues that exist")
    cpu_queue: str = Field("cpu", description="queue of stages that ask for no GPU and little memory")
    gpu_queue: str = Field("gpu", description="queue of stages that ask for a GPU")
    highmem_queue: str = Field(
        "highmem", description="queue of stages that ask for highmem_threshold_gb or more"
    )
    highmem_threshold_gb: float = Field(
        16.0, description="memory (GB) from which a stage goes to the highmem queue"
    )
    output_cap_bytes: int = Field(1024 * 1024, description="JSON size of one stage output")
    run_ttl_s: float = Field(
        7 * 86400.0, description="a finished run's keys (and its attempts' logs) are kept this long"
    )
    lease_s: float = Field(
        15.0, description="a running attempt's lease; the reaper re-sends it when it lapses"
    )
    heartbeat_s: float = Field(3.0, description="how often a worker renews its leases and publishes itself")
    max_deliveries: int = Field(5, description="a message whose worker died this many times is quarantined")
    visibility_timeout_s: float = Field(3600.0, description="the broker's visibility timeout")
    delay_set_threshold_s: float = Field(
        3.0, description="retry delays longer than this wait in the Redis delay set, not as a broker ETA"
    )
    in_place_s: float = Field(
        1.0,
        ge=0,
        description="a worker runs a child its commit made ready itself, without a trip through the "
        "queue, until a message has kept it this long; 0 = never (workers/execution.py)",
    )
    graph_cache_nodes: int = Field(
        20_000,
        ge=1,
        description="stages of run graphs a process keeps parsed in memory (about 2 KB each), the least "
        "recently used dropped first; a process that reads a dropped graph again says so in its log",
    )
    worker_ttl_s: float = Field(30.0, description="a worker not heard from this long is no longer live")
    outbox_grace_s: float = Field(10.0, description="a ready stage unsent this long is sent by the reaper")
    replicas_ack: int = Field(
        0,
        ge=0,
        description="replicas that must confirm a run's creation and an attempt's commit "
        "(Redis WAIT) before they count as done, and every other attached replica too; 0 = off "
        "(docs/security.md: failover)",
    )
    replicas_ack_timeout_ms: int = Field(
        1000, ge=1, description="how long one WAIT for CHORDFLOW_REPLICAS_ACK replicas may take"
    )
    sweep_s: float = Field(
        30.0, gt=0, le=30.0, description="how often the reaper looks for a queued stage with no message"
    )
    sweep_grace_s: float = Field(
        30.0, gt=0, description="a queued or retrying stage with no message this long is sent again"
    )
    test_ack_log: str | None = Field(
        None, description="tests only: a JSONL file each acknowledged commit and run creation is added to"
    )
    flower_basic_auth: str | None = Field(None, description="user:password that `chordflow flower` asks for")
    imports: tuple[str, ...] = Field((), description="modules every worker imports (stage types)")
    result_backend: str | None = Field(
        None, description="only for plain Celery tasks beside ours (benchmarks)"
    )
    ssl_cert_reqs: str = Field("required", description="rediss://: required, optional or none")
    ssl_ca_certs: str | None = Field(
        None, description="CA bundle that signed the rediss:// server's certificate"
    )
    hook_timeout_s: float = Field(
        10.0, description="a Python hook is waited for this long, then left running"
    )
    webhook_total_s: float = Field(60.0, description="one webhook delivery is retried for at most this long")
    webhook_threads: int = Field(
        8, ge=1, description="threads a worker delivers webhooks with (one at a time per URL)"
    )
    webhook_breaker_failures: int = Field(
        3, ge=1, description="deliveries to a URL failed in a row that open its circuit (it is skipped)"
    )
    webhook_breaker_cooloff_s: float = Field(
        60.0, ge=0, description="how long a URL whose circuit opened is skipped before it is tried again"
    )
    webhook_queue_cap: int = Field(
        1000, ge=1, description="deliveries waiting for one URL; one more is dropped and logged"
    )
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
    shell_output_tail_lines: int = Field(
        200,
        description="lines of a shell stage's stdout/stderr kept in its output (its log has them all, "
        "up to `log_lines_cap`)",
    )
    shell_output_tail_bytes: int = Field(
        64 * 1024,
        description="bytes of a shell stage's stdout/stderr kept in its output; a longer line is cut to its end",
    )
    log_lines_cap: int = Field(
        10_000, description="log lines kept per attempt (the last ones); the earlier ones are counted"
    )
    log_line_bytes: int = Field(16 * 1024, description="a longer log line is cut to its end")
    worker_log_lines_per_attempt: int = Field(
        200,
        ge=0,
        description="`ctx.log` lines of one attempt the worker's own log gets a copy of (the first ones)",
    )
    worker_log_line_bytes: int = Field(
        2048, ge=1, description="a longer line copied to the worker's own log is cut to its end"
    )
    log_flush_s: float = Field(
        0.2, description="a stage's log lines are sent to Redis in a batch this often while it runs"
    )

    # -- limits checked when a file is validated ----------------------------------------------------
    max_stages: int = Field(20_000, description="stages in one pipeline, after matrix expansion")
    max_matrix_instances: int = Field(1_000, description="instances of one matrix stage")
    max_fanout_items: int = Field(100_000, description="items of one for_each stage (checked when it starts)")
    fanout_chunk: int = Field(
        8,
        ge=1,
        le=FANOUT_CHUNK_MAX,
        description="consecutive fan-out items one message carries at most (1: one each)",
    )
    max_duration_s: float = Field(30 * 86400.0, description="the longest duration a file may give")
    max_integer: int = Field(2**53, description="the largest integer magnitude a file may give")
    condition_max_steps: int = Field(10_000, description="evaluation steps one `when:` may take")

    # -- limits at run time ------------------------------------------------------------------------------
    context_value_cap_bytes: int = Field(1024 * 1024, description="JSON size of one shared context value")
    context_key_cap_bytes: int = Field(
        1024, ge=1, description="UTF-8 size of one shared context key or metric name"
    )
    fanout_output_cap_bytes: int = Field(
        16 * 1024 * 1024, description="JSON size of a fan-out stage's assembled output"
    )
    webhook_timeout_cap_s: float = Field(60.0, description="the longest `timeout` a webhook may have")
    redis_timeout_s: float = Field(5.0, description="CLI commands give up on an unreachable Redis after this")

    # -- fleet-wide limits (docs/pipeline-file.md, "Capacity and fleet-wide limits") ---------------
    pools: Annotated[dict[str, Any], NoDecode] = Field(
        default_factory=dict,
        description='pools stages may name, as JSON: {"llm": 4, "vendor": {"size": 2, "rate_limit": "10/s"}}; '
        "where a file declares one too, the tighter counts",
    )
    rate_limits: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict,
        description='fleet-wide start rate per stage type, as JSON: {"vendor.call": "5/s"}; '
        "where a file sets one too, the tighter counts",
    )

    # -- the run page (`chordflow dashboard`) ------------------------------------------------------
    dashboard_token: str | None = Field(
        None,
        description="token the run page's cancel, pause, resume and retry buttons must send; "
        "unset: the page is read-only",
    )

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

    @field_validator("pools", "rate_limits", mode="before")
    @classmethod
    def _json_mapping(cls, value: Any, info: ValidationInfo) -> Any:
        """`CHORDFLOW_POOLS='{"llm": 4}'` (JSON text) or a mapping in the config file; the entries'
        shapes are checked lightly here and fully where they are used (language/rates.py)."""
        name = f"CHORDFLOW_{(info.field_name or '').upper()}"
        if isinstance(value, str):
            try:
                value = json.loads(value) if value.strip() else {}
            except ValueError as exc:
                raise ValueError(f"{name} must be a JSON mapping ({exc})") from None
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ValueError(f"{name} must be a mapping of name to limit, got {type(value).__name__}")
        for key, entry in value.items():
            if info.field_name == "rate_limits" and not isinstance(entry, str):
                raise ValueError(f'{name}: {key!r} must be a rate such as "5/s", got {entry!r}')
            if info.field_name == "pools" and (isinstance(entry, bool) or not isinstance(entry, (int, dict))):
                raise ValueError(
                    f'{name}: {key!r} must be a size or {{"size": N, "rate_limit": "R"}}, got {entry!r}'
                )
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
            check_config_keys(loaded, path)
            file_values = {k: v for k, v in loaded.items() if f"CHORDFLOW_{k.upper()}" not in os.environ}
        return cls(**{**file_values, **{k: v for k, v in overrides.items() if v is not None}})


def check_config_keys(values: dict[Any, Any], source: str) -> None:
    """Refuse a config file key that is no setting (a typo such as `redis-url`), naming the known ones."""
    known = sorted(Settings.model_fields)
    unknown = [str(key) for key in values if key not in Settings.model_fields]
    if not unknown:
        return
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(key.replace("-", "_").lower(), known, n=1, cutoff=0.6)
        hints.append(f"'{key}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
    raise ValueError(
        f"{source}: unknown setting{'s' if len(unknown) > 1 else ''} {', '.join(hints)}; "
        f"the known settings are: {', '.join(known)} (docs/cli.md#configuration)"
    )
