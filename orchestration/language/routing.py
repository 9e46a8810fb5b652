"""Which queue a stage goes to."""

from __future__ import annotations

from orchestration.language.options import Resources
from orchestration.settings import Settings


def queue_for(
    resources: Resources | None, queue: str | None, default_queue: str | None, settings: Settings
) -> str:
    """The stage's own `queue`, else what its resources need, else the default, else cpu.

    Resources beat `defaults.queue`: a stage asking for 32 GB goes to highmem even
    when the file's default queue is cpu.
    """
    if queue:
        return queue
    if resources is not None:
        if resources.gpu > 0:
            return settings.gpu_queue
        if resources.memory_gb is not None and resources.memory_gb >= settings.highmem_threshold_gb:
            return settings.highmem_queue
        if default_queue is None:
            return settings.cpu_queue
    return default_queue or settings.cpu_queue
