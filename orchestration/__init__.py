"""Chordflow's coordinator side: what a pipeline is and how a run advances."""

from orchestration.engine.registry import stage
from orchestration.errors import ChordflowError, FailStage, InvalidPipeline, RetryStage
from orchestration.language.spec import PipelineSpec, RetryPolicy, Stage

__all__ = [
    "ChordflowError",
    "FailStage",
    "InvalidPipeline",
    "Pipeline",
    "PipelineSpec",
    "RetryPolicy",
    "RetryStage",
    "Stage",
    "stage",
]


def __getattr__(name: str):
    if name == "Pipeline":  # the builder pulls in validation; import it only when asked
        from orchestration.language.builder import Pipeline

        return Pipeline
    raise AttributeError(name)
