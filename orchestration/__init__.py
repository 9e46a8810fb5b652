"""Chordflow's public API: `Pipeline` (build and submit in Python), `Client` (submit, follow,
control runs), `stage` (register a stage type), `hooks` (run and stage callbacks), the
`RetryPolicy` and the errors a stage may raise. The layers beneath are listed in
docs/architecture.md.

This is the façade layer (with `api.py` and `pipeline.py`): it may import the foundation
(`errors`, `settings`), `language/`, `graph/` and `engine/`, never `fleet/`, `cli/` or the
`workers` package; Celery and Redis load only when `Pipeline`, `Client` or `hooks` is asked for."""

from typing import TYPE_CHECKING, Any

from orchestration.engine.registry import stage
from orchestration.errors import ChordflowError, FailStage, InvalidPipeline, RetryStage
from orchestration.language.options import RetryPolicy
from orchestration.language.spec import PipelineSpec, Stage

if TYPE_CHECKING:
    from orchestration.api import Client
    from orchestration.engine import hooks
    from orchestration.pipeline import Pipeline

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
    # imported when asked: the builder pulls in validation, the client Celery and redis
    if name == "Pipeline":
        from orchestration.pipeline import Pipeline

        return Pipeline
    if name == "hooks":
        from orchestration.engine import hooks

        return hooks
    if name == "Client":
        from orchestration.api import Client

        return Client
    raise AttributeError(f"module 'orchestration' has no attribute {name!r}")
