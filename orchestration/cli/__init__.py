"""The `chordflow` command line: the group and its commands (`main`), what they share
(`_common`), the live screen, the run page and the pipeline templates.

It is the top layer: it may import every layer of `orchestration/`; never the `workers` package,
whose `chordflow worker` comes in through the `chordflow.commands` entry point
(tests/unit/test_layers.py)."""
