"""Every Redis key Chordflow uses, each built by one function.

All keys share one configurable prefix. A run's keys are listed by
`run_keys()` so the TTL set when a run ends reaches every one of them.

The members of the outbox and of the leases set name a stage (or one item of a
fan-out): `encode_member` writes them, `decode_member` reads them, and the Lua
scripts get their `outbox_member` from `lua_members()`, built from the same
separator.
"""

from __future__ import annotations

import re
from collections.abc import Container, Iterable

SEP = "|"  # ids never hold it (language/ids.py)


def encode_member(run_id: str, stage_id: str, item: int | None = None, *, lease: bool = False) -> str:
    """An outbox member, '<run>|<stage>'; a leases member (`lease`, or an item), '<run>|<stage>|<item>'
    with the item empty for a whole stage."""
    if item is None and not lease:
        return f"{run_id}{SEP}{stage_id}"
    return f"{run_id}{SEP}{stage_id}{SEP}{'' if item is None else item}"


def decode_member(member: str) -> tuple[str, str, int | None]:
    """(run id, stage id, item or None) of an outbox or leases member."""
    run_id, stage_id, *rest = member.split(SEP)
    item = rest[0] if rest else ""
    return run_id, stage_id, int(item) if item else None


def lua_members() -> str:
    """Lua source of `outbox_member(run_id, stage_id)`, what `encode_member(run_id, stage_id)` makes."""
    return f"local function outbox_member(run_id, stage_id) return run_id .. '{SEP}' .. stage_id end\n"


class Keys:
    def __init__(self, prefix: str = "chordflow"):
        self.prefix = prefix

    # -- one run -------------------------------------------------------------------------
    def run(self, run_id: str) -> str:
        """Hash: the run record (name, version, status, times, counters, fencing sequence)."""
        return f"{self.prefix}:run:{run_id}"

    def graph(self, run_id: str) -> str:
        """String: the resolved RunGraph as JSON, written once at submit."""
        return f"{self.prefix}:run:{run_id}:graph"

    def states(self, run_id: str) -> str:
        """Hash: stage id -> state."""
        return f"{self.prefix}:run:{run_id}:states"

    def pending(self, run_id: str) -> str:
        """Hash: stage id -> parents not yet finished (the counter join)."""
        return f"{self.prefix}:run:{run_id}:pending"

    def stage(self, run_id: str, stage_id: str) -> str:
        """Hash: one stage's attempt record (token, attempt, host, queue, times, error)."""
        return f"{self.prefix}:run:{run_id}:stage:{stage_id}"

    def items(self, run_id: str, stage_id: str) -> str:
        """Hash: a fan-out stage's items; fields are '<index>:<name>' (state, token, output, ...)."""
        return f"{self.prefix}:run:{run_id}:items:{stage_id}"

    def outputs(self, run_id: str) -> str:
        """Hash: stage id -> output JSON."""
        return f"{self.prefix}:run:{run_id}:outputs"

    def context(self, run_id: str) -> str:
        """Hash: shared context key -> JSON value."""
        return f"{self.prefix}:run:{run_id}:context"

    def metrics(self, run_id: str) -> str:
        """Hash: metric name -> number."""
        return f"{self.prefix}:run:{run_id}:metrics"

    def events(self, run_id: str) -> str:
        """Stream: every state change of the run."""
        return f"{self.prefix}:run:{run_id}:events"

    def logs(self, run_id: str, stage_id: str) -> str:
        """List: a stage's captured output lines, as workers before the per-attempt streams wrote them
        (still read, so a rolling upgrade loses no logs)."""
        return f"{self.prefix}:run:{run_id}:logs:{stage_id}"

    def log_stream(self, run_id: str, stage_id: str, item: int | None, attempt: int) -> str:
        """Stream: the log lines of one attempt of a stage (or of one item), each with its time and
        level, capped at `log_lines_cap` (engine/logs.py). A second run of the same attempt (its worker
        died, or `retry` reran the run) appends after a `BEGIN` entry."""
        return f"{self.prefix}:run:{run_id}:log:{stage_id}:{'' if item is None else item}:{attempt}"

    def log_index(self, run_id: str, stage_id: str) -> str:
        """Hash: '<item>:<attempt>' -> JSON of that attempt's log stream (lines sent, first and last
        time, ended); lists the streams of a stage without a SCAN."""
        return f"{self.prefix}:run:{run_id}:logindex:{stage_id}"

    def unit(self, run_id: str, stage_id: str, item: int | None) -> str:
        """The hash of one attempt's unit: the stage hash, or for an item its stage's items hash."""
        return self.items(run_id, stage_id) if item is not None else self.stage(run_id, stage_id)

    def run_ends(self, run_id: str) -> str:
        """Stream: the run's own changes only (its end, a pause, a reopening), for a client that
        waits for the end (`Client.follow` without an event callback): it is not woken per stage."""
        return f"{self.prefix}:run:{run_id}:ends"

    def parked(self, run_id: str) -> str:
        """Set: messages that arrived while the run was paused, re-sent on resume."""
        return f"{self.prefix}:run:{run_id}:parked"

    def run_keys(
        self, run_id: str, stage_ids: Iterable[str], fan_outs: Container[str] | None = None
    ) -> list[str]:
        """The keys of a run that get its TTL when it ends (and lose it when `retry` reopens it): a
        stage's items hash only if the stage is in `fan_outs` (None: every stage), since no other
        stage has one. A log index is not among them: like the log streams it indexes, it expires
        `run_ttl_s` after its last write (engine/logs.py)."""
        keys = [
            self.run(run_id),
            self.graph(run_id),
            self.states(run_id),
            self.pending(run_id),
            self.outputs(run_id),
            self.context(run_id),
            self.metrics(run_id),
            self.events(run_id),
            self.run_ends(run_id),
            self.parked(run_id),
        ]
        for sid in stage_ids:
            keys += [self.stage(run_id, sid), self.logs(run_id, sid)]
            if fan_outs is None or sid in fan_outs:
                keys.append(self.items(run_id, sid))
        return keys

    # -- across runs -----------------------------------------------------------------------
    def runs(self) -> str:
        """Sorted set: run id by submit time."""
        return f"{self.prefix}:runs"

    def active_runs(self) -> str:
        """Sorted set: the runs not known to have ended, by submit time; the reaper's anti-entropy
        sweep reads it and drops the ones that ended."""
        return f"{self.prefix}:runs:active"

    def replicated_mark(self) -> str:
        """Pub/sub channel, no key: a PUBLISH to it (to no one) before a WAIT is a replicated command
        of the WAIT's own connection, so the WAIT covers the writes before it (engine/durability.py)."""
        return f"{self.prefix}:replicated"

    def pipeline_runs(self, name: str) -> str:
        """Sorted set: a pipeline's run ids by submit time."""
        return f"{self.prefix}:pipeline:{name}:runs"

    def pipeline_runs_pattern(self) -> str:
        """A SCAN pattern matching every `pipeline_runs` key (the prefix's glob characters escaped)."""
        head, tail = self.pipeline_runs("\0").split("\0")
        return re.sub(r"([*?\[\]\\])", r"\\\1", head) + "*" + tail

    def pipeline_of(self, key: str) -> str:
        """The pipeline name in a `pipeline_runs` key."""
        head, tail = self.pipeline_runs("\0").split("\0")
        return key[len(head) : -len(tail)]

    # -- pipelines that depend on pipelines (engine/records.py) --------------------------------
    def registry(self) -> str:
        """Hash: pipeline name -> JSON of its registered file ({spec, source, sets, added_at, origin})."""
        return f"{self.prefix}:registry"

    def triggered_by(self, upstream: str) -> str:
        """Set: the registered pipelines whose `triggers` include `on_success_of: upstream`."""
        return f"{self.prefix}:registry:triggers:{upstream}"

    def pipeline_state(self, name: str) -> str:
        """Hash: a pipeline's last run end and last success (run id, status, time), kept past its runs."""
        return f"{self.prefix}:pipeline-state:{name}"

    def assets(self) -> str:
        """Hash: asset -> JSON {run_id, pipeline, at} of the last successful run that provided it."""
        return f"{self.prefix}:assets"

    def chain(self, chain_id: str) -> str:
        """String: a chain of pipelines as JSON (its pipelines in order, their runs, its status)."""
        return f"{self.prefix}:chain:{chain_id}"

    def chains(self) -> str:
        """Sorted set: chain id by start time."""
        return f"{self.prefix}:chains"

    def stale_alerts(self) -> str:
        """Hash: pipeline -> the last success (run id, or 'never') its pipeline_stale event was sent for."""
        return f"{self.prefix}:stale:alerted"

    def stale_lock(self) -> str:
        """String: the lock of the one hook sender that looks for stale pipelines at a time."""
        return f"{self.prefix}:stale:lock"

    def idempotency(self, key: str) -> str:
        """String: the run id submitted under an idempotency key."""
        return f"{self.prefix}:idem:{key}"

    def workers(self) -> str:
        """Hash: worker hostname -> JSON (queues, resources, stage types, heartbeat time)."""
        return f"{self.prefix}:workers"

    def delayed(self) -> str:
        """Sorted set: retry messages by due time (Redis clock), drained by workers."""
        return f"{self.prefix}:delayed"

    def leases(self) -> str:
        """Sorted set: '<run>|<stage>|<item>' by lease expiry (Redis clock), read by the reaper."""
        return f"{self.prefix}:leases"

    @staticmethod
    def broker_queue(queue: str) -> str:
        """List: the broker's queue `queue` (kombu's Redis transport keeps priority 0 under the queue's
        own name, unprefixed); commits LPUSH the messages of the stages they make ready."""
        return queue

    def outbox(self) -> str:
        """Sorted set: '<run>|<stage>' made ready but not yet confirmed sent, by time (Redis clock)."""
        return f"{self.prefix}:outbox"

    def hooks(self) -> str:
        """Stream: hook events waiting for delivery (field 'e': the event as JSON), read by every
        worker's hook sender through the consumer group 'senders' (at least once)."""
        return f"{self.prefix}:hooks"

    def health_probe(self) -> str:
        """String: the write probe of `chordflow health` (a short TTL)."""
        return f"{self.prefix}:health:probe"

    def health_oldest(self) -> str:
        """Hash: broker queue list name -> JSON {tag, seen} of the message a health check saw at its head."""
        return f"{self.prefix}:health:oldest"

    def redbeat_prefix(self) -> str:
        """RedBeat's key prefix: schedule entries are '<prefix>:redbeat:<name>'."""
        return f"{self.prefix}:redbeat:"

    def redbeat_lock(self) -> str:
        """String: the lock of the one `chordflow beat` that fires schedules."""
        return f"{self.redbeat_prefix()}:lock"

    def schedule_outcomes(self) -> str:
        """Hash: schedule name -> JSON of its last firing (tick, run_id or error, at)."""
        return f"{self.prefix}:schedules:last"

    def cache(self, key: str) -> str:
        """String: a cached stage output (JSON), with the stage's cache TTL."""
        return f"{self.prefix}:cache:{key}"

    # -- capacity: worker ledgers, fleet-wide limits, waiting stages (engine/limits.py) ----------
    def worker_holds(self, host: str) -> str:
        """Sorted set: the holders admitted on a worker's ledger ('<lease member>#<token>') by lease
        expiry (Redis's clock): a holder whose lease ran out no longer counts."""
        return f"{self.prefix}:capacity:worker:{host}:holds"

    def worker_held(self, host: str) -> str:
        """Hash: holder -> JSON {gpus: [device ids], memory_gb} it holds on the worker's ledger."""
        return f"{self.prefix}:capacity:worker:{host}:held"

    def capacity_waiting(self, queue: str) -> str:
        """Sorted set: stages of `queue` that no worker could fit when they began, by time (ms):
        JSON {p: payload, run, stage, item, gpu, memory_gb}; woken when capacity frees."""
        return f"{self.prefix}:capacity:{queue}:waiting"

    def limit_holds(self, limit: str) -> str:
        """Sorted set: holders of a fleet-wide limit ('pool:<name>', 'key:<value>', 'run:<id>') by
        lease expiry (Redis's clock)."""
        return f"{self.prefix}:limit:{limit}:holds"

    def limit_waiting(self, limit: str) -> str:
        """Sorted set: payloads of the stages waiting for a slot of `limit`, by time (ms)."""
        return f"{self.prefix}:limit:{limit}:waiting"

    def limit_rate(self, limit: str) -> str:
        """Hash: a rate limit's GCRA state ('tat': ms the next start may come, 'horizon': ms up to
        which waiting stages hold reserved slots)."""
        return f"{self.prefix}:limit:{limit}:rate"

    def limits_waited(self) -> str:
        """Hash: limit -> its size, for every limit that has had stages waiting (the reaper's sweep)."""
        return f"{self.prefix}:limits:waited"

    def reaper_lock(self) -> str:
        """String: the lock held by the one worker that reaps at a time."""
        return f"{self.prefix}:reaper"

    def counter(self, name: str) -> str:
        """String: a test or benchmark counter."""
        return f"{self.prefix}:counter:{name}"
