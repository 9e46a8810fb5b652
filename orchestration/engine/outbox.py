"""Where a stage's message waits in Redis before Python sends it to the broker.

- The outbox (`keys.outbox`): stages made ready for Python to send (roots, fan-outs, children of
  commits made outside an attempt, reopened stages), until their message is with the broker
  (`sent`); the reaper sends again what stayed there too long (`unsent`).
- The delay set (`keys.delayed`): messages due later (retries' countdowns, stages woken or given
  a rate slot), claimed by exactly one worker when due (`due_delayed`).

`Outbox` is the run store's `outbox` (`store.RunStore`). Both sets are scored by Redis's clock.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import redis

from orchestration.engine.keys import Keys, decode_member, encode_member


class Outbox:
    """The outbox and the delay set (see the module docstring); `clock` is Redis's (epoch s)."""

    def __init__(self, client: redis.Redis, keys: Keys, clock: Callable[[], float]):
        self._r: Any = client
        self.keys = keys
        self._clock = clock

    # -- the outbox: stages made ready, until their message is with the broker ----------------
    def sent(self, run_id: str, stage_ids: Sequence[str]) -> None:
        """The messages of these ready stages are with the broker: take them out of the outbox."""
        if stage_ids:
            self._r.zrem(self.keys.outbox(), *(encode_member(run_id, sid) for sid in stage_ids))

    def unsent(self, before_s: float, limit: int = 200) -> list[tuple[str, str]]:
        """(run id, stage id) of up to `limit` outbox entries made before `before_s` (epoch s,
        Redis's clock): ready stages whose message may never have reached the broker."""
        members = self._r.zrangebyscore(self.keys.outbox(), 0, before_s, start=0, num=limit)
        return [decode_member(member)[:2] for member in members]

    # -- the delay set: retry messages waiting for their time ---------------------------------
    def delay(self, payload: str, delay_s: float) -> None:
        """Send a message again after `delay_s` (Redis's clock), through the delay set."""
        due_ms = int((self._clock() + delay_s) * 1000)
        self._r.zadd(self.keys.delayed(), {payload: due_ms})

    def due_delayed(self, limit: int = 100, ahead_s: float = 0.0) -> list[tuple[str, float]]:
        """Claim messages of the delay set (retries, stages woken or given a rate slot) due within
        `ahead_s`, each claimed by exactly one caller: (payload, seconds until it is due, >= 0), so
        the caller can send it with that countdown and it starts on time, not a tick late."""
        now_ms = int(self._clock() * 1000)
        claimed = []
        horizon = now_ms + int(ahead_s * 1000)
        for payload, due in self._r.zrangebyscore(
            self.keys.delayed(), 0, horizon, start=0, num=limit, withscores=True
        ):
            if self._r.zrem(self.keys.delayed(), payload):
                claimed.append((payload, max(0.0, (due - now_ms) / 1000)))
        return claimed

    def delayed_payloads(self, limit: int = 1000) -> list[str]:
        """Up to `limit` messages waiting in the delay set, soonest first (left there)."""
        return self._r.zrange(self.keys.delayed(), 0, limit - 1)
