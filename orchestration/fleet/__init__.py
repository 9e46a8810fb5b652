"""The fleet: a private Redis and local workers (`embedded`), health, capacity per queue, run
history, schedules (RedBeat), the registry of pipelines and chains of them.

It may import every layer below it (errors, settings, `language/`, `graph/`, `engine/`, the
façade) and itself; never `cli/`, and never the `workers` package, by import or by name: it
starts workers as `python -m orchestration worker` (tests/unit/test_layers.py)."""
