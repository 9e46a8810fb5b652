"""One JSON encoder for every `--json` (ISO times, numbers as numbers, null where absent), and the
next time of a schedule computed from its cron expression or interval."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from celery import Celery
from celery.schedules import crontab, schedule

from orchestration.cli.json_out import typed
from orchestration.fleet.schedules import next_fire_s

APP = Celery(set_as_current=False)


def test_times_become_iso_and_numbers_stay_numbers():
    data = {
        "next_at": 1_800_000_000.5,
        "last": {"tick": 1_800_000_000, "at": 1_800_000_001.25, "run_id": "r1"},
        "seen": 0,
        "count": 3,
        "age_s": 1.5,
        "missing_at": None,
        "nan": float("nan"),
        "flag": True,
        "nested": [{"t": 1_800_000_002.0}],
        "set": {"b", "a"},
    }
    assert typed(data) == {
        "next_at": "2027-01-15T08:00:00.500Z",
        "last": {"tick": "2027-01-15T08:00:00.000Z", "at": "2027-01-15T08:00:01.250Z", "run_id": "r1"},
        "seen": "1970-01-01T00:00:00.000Z",
        "count": 3,
        "age_s": 1.5,
        "missing_at": None,
        "nan": None,
        "flag": True,
        "nested": [{"t": "2027-01-15T08:00:02.000Z"}],
        "set": ["a", "b"],
    }


def test_a_strings_that_is_already_a_time_is_left_alone():
    assert typed({"created_at": "2027-01-15T08:00:00.000Z"}) == {"created_at": "2027-01-15T08:00:00.000Z"}


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def test_the_next_time_of_a_cron_is_its_next_matching_minute_at_any_moment():
    nightly = crontab(minute="0", hour="2", app=APP)
    for now in ("2026-12-03 01:59:00", "2026-12-03 01:59:36", "2026-12-03 01:59:59.9", "2026-12-02 23:00:00"):
        assert next_fire_s(nightly, None, at(now)) == at("2026-12-03 02:00:00"), now
    assert next_fire_s(nightly, None, at("2026-12-03 02:00:00.5")) == at("2026-12-04 02:00:00")
    every_five = crontab(minute="*/5", app=APP)
    assert next_fire_s(every_five, None, at("2026-12-03 10:02:10")) == at("2026-12-03 10:05:00")


def test_the_next_time_of_an_interval_is_never_in_the_past():
    every = schedule(timedelta(seconds=30), app=APP)
    now = at("2026-12-03 10:00:00")
    assert next_fire_s(every, now - 10, now) == now + 20
    assert next_fire_s(every, now - 300, now) == now  # due: beat fires it at its next loop
    assert next_fire_s(every, None, now) == now
