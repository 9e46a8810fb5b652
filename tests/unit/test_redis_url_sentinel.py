"""Redis URLs: the Sentinel form, masking, and bad options or databases (exit 2, saying what is wrong)."""

from __future__ import annotations

import pytest

from orchestration.engine import redis_url, sentinel
from orchestration.engine.celeryconfig import celery_config
from orchestration.engine.redis_url import InvalidRedisUrl, check, shown
from orchestration.fleet.schedules import redbeat_redis
from orchestration.settings import Settings


def test_a_sentinel_url_is_parsed_into_sentinels_master_db_and_credentials():
    parsed = sentinel.parse("redis+sentinel://:p%40ss@s1:26379,10.0.0.2:26380,[::1]:26381/mymaster/3")
    assert parsed.sentinels == (("s1", 26379), ("10.0.0.2", 26380), ("::1", 26381))
    assert parsed.master_name == "mymaster"
    assert parsed.db == 3
    assert parsed.password == "p@ss" and parsed.username is None
    assert not parsed.tls
    tls = sentinel.parse("rediss+sentinel://app:pw@s1:26379/cache")
    assert tls.tls and tls.db == 0 and tls.username == "app" and tls.password == "pw"


@pytest.mark.parametrize(
    "url",
    [
        "redis+sentinel://s1:26379/mymaster",
        "redis+sentinel://s1:26379/mymaster/0",
        "redis+sentinel://:secret@s1:26379,s2:26379/mymaster/15",
        "rediss+sentinel://s1:26379/m.y-master_1/",
    ],
)
def test_good_sentinel_urls_pass_the_check(url):
    assert check(url) == url


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("redis+sentinel://s1/mymaster", "'s1' is not HOST:PORT"),
        ("redis+sentinel://s1:26379", "names no master"),
        ("redis+sentinel://s1:26379/", "names no master"),
        ("redis+sentinel://s1:0/m", "port 0"),
        ("redis+sentinel://s1:70000/m", "port 70000"),
        ("redis+sentinel://s1:26379,/m", "'' is not HOST:PORT"),
        ("redis+sentinel://s1:26379/m/x", "database 'x'"),
        ("redis+sentinel://s1:26379/m/99999999999", "database '99999999999'"),
        ("redis+sentinel://s1:26379/m/0/extra", "more than /MASTER_NAME/DB"),
        ("redis+sentinel://s1:26379/my%20master/0", "master name"),
        ("redis+sentinel://s1:26379/m?socket_timeout=1", "takes no ?options"),
    ],
)
def test_bad_sentinel_urls_say_what_is_wrong(url, why):
    with pytest.raises(InvalidRedisUrl) as caught:
        check(url)
    assert why in str(caught.value)
    assert caught.value.exit_code == 2


def test_passwords_are_masked_in_every_sentinel_message():
    url = "redis+sentinel://:hunter2@s1:26379,s2:26379/mymaster/2"
    assert shown(url) == "redis+sentinel://***@s1:26379,s2:26379/mymaster/2"
    assert "hunter2" not in redis_url.mask(f"cannot reach {url}")
    with pytest.raises(InvalidRedisUrl) as caught:
        check("redis+sentinel://:hunter2@s1/mymaster")
    assert "hunter2" not in str(caught.value)
    assert "hunter2" not in str(redis_url.RedisUnreachable(url, "no master"))
    user = "rediss+sentinel://app:hunter2@s1:26379/m"
    assert shown(user) == "rediss+sentinel://***@s1:26379/m/0"


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("redis://localhost:6379/0?foo=bar", "the option 'foo' is not a Redis connection option"),
        (
            "redis://localhost:6379/0?socket_timeout=abc",
            "the option 'socket_timeout' has a value of the wrong type",
        ),
        ("redis://localhost:6379/0?db=x", "the option 'db' has a value of the wrong type"),
        (
            "redis://localhost:6379/99999999999999999999",
            "the database '99999999999999999999' is not a number",
        ),
        ("redis://localhost:6379/0?db=-1", "the database -1 is not a number"),
        ("unix:///tmp/redis.sock?bogus=1", "the option 'bogus'"),
    ],
)
def test_a_bad_db_or_option_is_exit_2_saying_what_is_wrong(url, why):
    with pytest.raises(InvalidRedisUrl) as caught:
        check(url)
    assert why in str(caught.value)
    assert caught.value.exit_code == 2


@pytest.mark.parametrize(
    "url",
    [
        "redis://localhost:6379/0?socket_timeout=3",
        "rediss://h:6380/1?ssl_cert_reqs=none",
        "unix:///tmp/r.sock?db=2",
    ],
)
def test_known_options_pass(url):
    assert check(url) == url


def test_the_broker_gets_kombus_sentinel_form_and_beat_redbeats():
    settings = Settings(redis_url="redis+sentinel://:p%40ss@s1:26379,s2:26380/mymaster/4")
    config = celery_config(settings)
    assert config["broker_url"] == "sentinel://:p%40ss@s1:26379/4;sentinel://:p%40ss@s2:26380/4"
    assert config["broker_transport"] == "chordflow-sentinel"
    assert config["broker_transport_options"]["master_name"] == "mymaster"
    beat = redbeat_redis(settings)
    assert beat["redbeat_redis_url"].startswith("redis-sentinel://")
    options = beat["redbeat_redis_options"]
    assert options["sentinels"] == [("s1", 26379), ("s2", 26380)]
    assert (options["service_name"], options["db"], options["password"]) == ("mymaster", 4, "p@ss")


def test_rediss_sentinel_turns_tls_on_for_the_broker():
    config = celery_config(Settings(redis_url="rediss+sentinel://s1:26379/m", ssl_cert_reqs="none"))
    assert "broker_use_ssl" in config
