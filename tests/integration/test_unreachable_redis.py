"""Issue 10, failure 9: an unreachable Redis or a malformed CHORDFLOW_REDIS_URL, through the real
console script. Every command fails within `redis_timeout_s` (5 s) with `error: cannot reach
Redis at redis://host:port/db (...)`, the password masked, exit 1; a malformed URL is exit 2 with
a message saying what is wrong. None hangs, none prints `unexpected` or a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from orchestration.fleet.embedded import RedisServer, free_port

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "examples" / "quickstart.yaml"
PASSWORD = "pa55-w0rd"
LIMIT_S = 6.0  # redis_timeout_s (5 s), and the interpreter's start


def chordflow(*args: str, url: str) -> tuple[subprocess.CompletedProcess[str], float]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "CHORDFLOW_REDIS_URL": url}
    env.pop("CHORDFLOW_DEBUG", None)
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "orchestration", *args],
        check=False,
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result, time.monotonic() - started


@pytest.mark.parametrize(
    "args",
    [("status", "r1"), ("cancel", "r1"), ("submit", str(QUICKSTART))],
    ids=["status", "cancel", "submit"],
)
def test_a_closed_port_fails_fast_with_the_password_masked(args):
    port = free_port()  # free now: nothing listens there
    result, took = chordflow(*args, url=f"redis://:{PASSWORD}@127.0.0.1:{port}/0")
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert took < LIMIT_S, f"took {took:.1f}s"
    assert f"error: cannot reach Redis at redis://***@127.0.0.1:{port}/0 (" in result.stderr, output
    assert PASSWORD not in output
    assert "unexpected" not in output and "Traceback" not in output


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("redis//x", "no scheme"),
        ("http://x", "the scheme is http://"),
        ("redis://host:notaport", "the port 'notaport' is not a number"),
        (f"redis://:{PASSWORD}@host:99999/0", "the port '99999' is not a number"),
    ],
)
@pytest.mark.parametrize("args", [("status", "r1"), ("submit", str(QUICKSTART))], ids=["status", "submit"])
def test_a_malformed_url_is_exit_2_saying_what_is_wrong(url, why, args):
    result, took = chordflow(*args, url=url)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "is not a Redis URL" in result.stderr and why in result.stderr, output
    assert PASSWORD not in output
    assert "unexpected" not in output and "Traceback" not in output
    assert took < LIMIT_S


def test_a_read_only_redis_is_named_as_such():
    """A write to a replica (or to a primary mid-failover) says so, exit 1, not `unexpected`."""
    with RedisServer() as server:
        redis.Redis.from_url(server.url).replicaof("127.0.0.1", free_port())  # no primary there
        result, _ = chordflow("submit", str(QUICKSTART), url=server.url)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "it is read-only: a replica, or a failover under way" in result.stderr, output
    assert "unexpected" not in output and "Traceback" not in output
