"""What runs on each machine: the worker's Celery app with one task per stage type, the attempt
from its token to its one commit, lease renewal, the `ctx` a stage function gets, the built-in
types, and `chordflow worker`.

It may import any layer of `orchestration/`; `orchestration/` never imports it or names it
(tests/unit/test_layers.py)."""
