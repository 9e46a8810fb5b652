"""`orchestration.Pipeline`: the builder of `language/builder.py`, plus `submit()`.

The builder itself only reads, validates and writes a pipeline; submitting needs the
client (Celery and Redis), which sits above the language layer, so it is added here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from orchestration.errors import ChordflowError
from orchestration.language import builder
from orchestration.settings import Settings

if TYPE_CHECKING:
    from orchestration.api import RunHandle


class Pipeline(builder.Pipeline):
    """A pipeline under construction, which can also be submitted: `Pipeline(name).add(...).submit()`."""

    def submit(self, settings: Settings | None = None, **options: Any) -> RunHandle:
        """Validate and submit to the configured Redis (CHORDFLOW_REDIS_URL); returns a RunHandle.

        `options` are those of `Client.submit`: selection, only, check_types, idempotency_key, no_cache.
        """
        from orchestration.api import Client  # Celery and redis only when submitting

        settings = settings or Settings.load()
        if not settings.redis_url:
            raise ChordflowError(
                "set CHORDFLOW_REDIS_URL to submit, or run the file with "
                "`chordflow submit FILE`, which starts a private Redis and workers"
            )
        return Client(settings).submit(self.build(settings), **options)
