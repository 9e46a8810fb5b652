"""The engine: the Redis run store and its Lua scripts (`lua/`), keys and states, dispatch, the
reaper, retries, capacity and limits, hooks and their sender, the stage registry and Celery's
configuration: how a run advances.

It may import `orchestration.errors`, `orchestration.settings`, `language/`, `graph/` and itself,
and Redis, Celery and kombu; never the façade (`api`, `pipeline`), `fleet/`, `cli/` or the
`workers` package (tests/unit/test_layers.py)."""
