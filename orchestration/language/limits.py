"""What one pipeline file may ask for (docs/pipeline-file.md, "Limits"), and how a model finds them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import ValidationInfo

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
