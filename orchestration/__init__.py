"""Chordflow's coordinator side: what a pipeline is and how a run advances."""

from .errors import ChordflowError, FailStage, InvalidPipeline, RetryStage
from .registry import stage
from .spec import PipelineSpec, RetryPolicy, Stage

__all__ = ["ChordflowError", "FailStage", "InvalidPipeline", "Pipeline", "PipelineSpec", "RetryPolicy",
           "RetryStage", "Stage", "stage"]


def __getattr__(name: str):
    if name == "Pipeline":  # the builder pulls in validation; import it only when asked
        from .builder import Pipeline

        return Pipeline
    raise AttributeError(name)
