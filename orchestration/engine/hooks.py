"""Lifecycle hooks: Python callables registered in code, and webhooks configured in the file.

An event never runs a hook on the path of a stage's attempt. The script that commits a
transition (begin, finish, retry, control) also adds the event to an outbox, the Redis
stream `Keys.hooks()`, in the same atomic step; the hook sender in every worker's main
process (`orchestration.hook_sender`) reads it from there and runs the Python hooks
registered for its kind, each under a time limit, then POSTs it to the run's webhooks that
want it, with retries under a total time cap. Delivery is at least once: an event whose
sender died before it was done is delivered again by another worker's sender. A hook that
raises, runs too long, or a webhook that keeps failing is logged and never fails a stage.

    from orchestration import hooks

    @hooks.on_stage_error
    def page_someone(event): ...   # event: kind, run_id, stage_id, attempt, error, will_retry, ...

Hooks run in the worker's main process, so register them in a module the worker imports
(`--import`, `CHORDFLOW_IMPORTS` or an entry point).
"""

from __future__ import annotations

import base64
import json
import logging
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from orchestration.engine.redis_url import mask
from orchestration.errors import ChordflowError
from orchestration.language.options import Webhook, webhook_url_problem

log = logging.getLogger("chordflow.hooks")
KINDS = (
    "run_start",
    "stage_start",
    "stage_complete",
    "stage_error",
    "run_complete",
    "run_paused",
    "run_resumed",
)
Hook = Callable[[dict[str, Any]], Any]
_HOOKS: dict[str, list[Hook]] = {kind: [] for kind in KINDS}


def register(kind: str, fn: Hook) -> Hook:
    if kind not in _HOOKS:
        raise ValueError(f"unknown hook {kind!r}; hooks are {', '.join(KINDS)}")
    _HOOKS[kind].append(fn)
    return fn


def on_run_start(fn: Hook) -> Hook:
    return register("run_start", fn)


def on_stage_start(fn: Hook) -> Hook:
    return register("stage_start", fn)


def on_stage_complete(fn: Hook) -> Hook:
    return register("stage_complete", fn)


def on_stage_error(fn: Hook) -> Hook:
    return register("stage_error", fn)


def on_run_complete(fn: Hook) -> Hook:
    return register("run_complete", fn)


def on_run_paused(fn: Hook) -> Hook:
    return register("run_paused", fn)


def on_run_resumed(fn: Hook) -> Hook:
    return register("run_resumed", fn)


def registered(kind: str) -> list[Hook]:
    """The Python hooks of `kind` registered in this process (none for an unknown kind)."""
    return list(_HOOKS.get(kind, ()))


def entry(kind: str, event: Mapping[str, Any], webhooks: Iterable[Webhook]) -> str | None:
    """The outbox entry of an event (the JSON of `{"kind": kind, **event}`), or None when
    nobody listens: no Python hook of `kind` in this process and no webhook that wants it."""
    payload = {"kind": kind, **event}
    if not _HOOKS.get(kind) and not any(wants(hook, payload) for hook in webhooks):
        return None
    return json.dumps(payload, default=str, separators=(",", ":"))


def announced(kind: str, event: Mapping[str, Any]) -> str:
    """The outbox entry of an event announced whoever listens: decided outside a worker (a run's
    start at submit, an end decided by the dispatcher), where this process's Python hooks are not
    the workers' (the hook sender skips it when no hook or webhook of the run wants it)."""
    return json.dumps({"kind": kind, **event}, default=str, separators=(",", ":"))


def wants(hook: Webhook, payload: Mapping[str, Any]) -> bool:
    kind = payload["kind"]
    names = {kind}
    if kind == "run_complete":
        names.add(f"run_{payload.get('status')}")  # run_failed, run_succeeded, run_cancelled
    return bool(names & set(hook.events)) or "*" in hook.events


# mask(text): `text` with the user:password of every URL in it replaced by `***` (a password
# holding an unencoded `@` included); every log line that may show a URL goes through it.
OPTIONAL = ("traceback",)  # what a payload carries only when the webhook's `include` names it


class WebhookRefused(ChordflowError, ValueError):
    """A webhook URL that is not http:// or https://: never opened (and never retried)."""


# Why a URL is not delivered to (not http:// or https://, or no host), or None: the same rule
# the file's validation applies (spec.webhook_url_problem), checked again at delivery.
refusal = webhook_url_problem


def payload_for(hook: Webhook, payload: Mapping[str, Any]) -> dict[str, Any]:
    """What `hook` is sent of `payload`: without tracebacks (at any depth: an event's `error`
    carries one) unless the webhook's `include` names `traceback`."""
    include = set(hook.include)
    dropped = {name for name in OPTIONAL if name not in include}

    def strip(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {k: strip(v) for k, v in value.items() if k not in dropped}
        if isinstance(value, list | tuple):
            return [strip(v) for v in value]
        return value

    return strip(dict(payload)) if dropped else dict(payload)


def _split_credentials(url: str) -> tuple[str, dict[str, str]]:
    """The URL without its user:password, and the Basic Authorization header they make."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, {}
    host = parts.hostname or ""
    netloc = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port is not None else "")
    userinfo = f"{urllib.parse.unquote(parts.username or '')}:{urllib.parse.unquote(parts.password or '')}"
    token = base64.b64encode(userinfo.encode()).decode()
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc)), {"Authorization": f"Basic {token}"}


def post(hook: Webhook, payload: Mapping[str, Any], total_s: float) -> None:
    """POST `payload` to `hook` (a user:password in its URL is sent as Basic authorization, not
    as part of the URL), each try bounded by the webhook's timeout, retried with
    backoff until it succeeds or another try would start after `total_s` seconds (so the whole
    delivery takes at most `total_s` plus one timeout); raises the last error.

    Only http:// and https:// URLs are opened, redirects included (validation refuses the others
    already; a stored run from before that is refused here too: WebhookRefused, logged, no retry).
    The payload leaves out tracebacks unless the webhook's `include` names `traceback`."""
    why = refusal(hook.url)
    if why is not None:
        log.error("webhook %s refused: %s", mask(hook.url), why)
        raise WebhookRefused(f"webhook {mask(hook.url)} refused: {why}")
    body = json.dumps(payload_for(hook, payload), default=str).encode()
    url, auth = _split_credentials(hook.url)
    headers = {"Content-Type": "application/json", "User-Agent": "chordflow", **auth, **hook.headers}
    # urllib.request and tenacity load here: only the hook sender posts, never a stage's process
    from orchestration.engine.webhook_http import send

    send(url, body, headers, hook.timeout, total_s)
