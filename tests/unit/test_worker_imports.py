"""A worker imports what running stages needs, and not the rest of Chordflow: a module imported
before the pool forks is in every pool process's memory (benchmarks/bench_memory.py measures it).

The file language (reading, checking and resolving a pipeline file: the spec models, YAML and
`${...}`, selection, conditions), the client and RedBeat are loaded by the code that needs them:
`resolve()`, a registered pipeline, a stage with `when:`, a scheduled submit; so is the HTTP client of
webhooks (urllib.request, tenacity), by the hook sender's first POST, and rich, by the first command
that prints through it (`chordflow worker` goes through the command line and never does)."""

from __future__ import annotations

import json
import subprocess
import sys

# `chordflow worker` goes through the command line, then the worker package.
PROBE = """
import json, sys
import orchestration.cli.main, workers.cli, workers.main, workers.app
print(json.dumps(sorted(sys.modules)))
"""

NOT_IN_A_WORKER = {
    "orchestration.api",
    "orchestration.engine.webhook_http",
    "orchestration.graph.render",
    "orchestration.fleet.schedules",
    "orchestration.language.builder",
    "orchestration.language.expressions",
    "orchestration.language.interpolation",
    "orchestration.language.loader",
    "orchestration.language.selection",
    "orchestration.language.spec",
    "orchestration.language.validation",
    "orchestration.language.yaml_reader",
    "redbeat",
    "rich",
    "simpleeval",
    "tenacity",
}


def _worker_modules() -> set[str]:
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout))


def test_a_worker_imports_no_file_language_client_or_redbeat():
    loaded = _worker_modules()
    assert "workers.app" in loaded  # the probe sees the worker's imports
    assert not (loaded & NOT_IN_A_WORKER), sorted(loaded & NOT_IN_A_WORKER)
