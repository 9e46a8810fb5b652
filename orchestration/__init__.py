"""Chordflow's public API: `Pipeline` (build and submit in Python), `Client` (submit, follow,
control runs), `stage` (register a stage type), `hooks` (run and stage callbacks), the
`RetryPolicy` and the errors a stage may raise. The layers beneath are listed in
docs/architecture.md.

This is the façade layer (with `api.py`, `submit_checks.py` and `pipeline.py`): it may import the
foundation (`errors`, `settings`), `language/`, `graph/` and `engine/`, never `fleet/`, `cli/` or
the `workers` package. Every name is imported when first asked for: importing any
`orchestration.x` runs this module first, and the `chordflow` command must not pay for Celery,
kombu and redis (the registry pulls them in through the broker options) when it only validates
a file or prints its help."""

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from orchestration.api import Client
    from orchestration.engine import hooks
    from orchestration.engine.registry import stage
    from orchestration.errors import ChordflowError, FailStage, InvalidPipeline, RetryStage
    from orchestration.language.options import RetryPolicy
    from orchestration.language.spec import PipelineSpec, Stage
    from orchestration.pipeline import Pipeline

# public name -> (module, attribute); attribute None: the module itself
_LAZY: dict[str, tuple[str, str | None]] = {
    "ChordflowError": ("orchestration.errors", "ChordflowError"),
    "Client": ("orchestration.api", "Client"),
    "FailStage": ("orchestration.errors", "FailStage"),
    "InvalidPipeline": ("orchestration.errors", "InvalidPipeline"),
    "Pipeline": ("orchestration.pipeline", "Pipeline"),
    "PipelineSpec": ("orchestration.language.spec", "PipelineSpec"),
    "RetryPolicy": ("orchestration.language.options", "RetryPolicy"),
    "RetryStage": ("orchestration.errors", "RetryStage"),
    "Stage": ("orchestration.language.spec", "Stage"),
    "hooks": ("orchestration.engine.hooks", None),
    "stage": ("orchestration.engine.registry", "stage"),
}

__all__ = [
    "ChordflowError",
    "Client",
    "FailStage",
    "InvalidPipeline",
    "Pipeline",
    "PipelineSpec",
    "RetryPolicy",
    "RetryStage",
    "Stage",
    "hooks",
    "stage",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'orchestration' has no attribute {name!r}")
    module_name, attribute = _LAZY[name]
    module = import_module(module_name)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value  # asked once: later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
