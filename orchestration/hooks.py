"""Lifecycle hooks: Python callables registered in code, and webhooks configured in the file.

Events are emitted by the process that committed the transition, and every
transition commits exactly once, so each event reaches each hook once however
many workers there are. A hook that raises or a webhook that fails is logged
and never fails a stage.

    from orchestration import hooks

    @hooks.on_stage_error
    def page_someone(event): ...   # event: kind, run_id, stage_id, attempt, error, will_retry, ...
"""

from __future__ import annotations

import json
import logging
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from tenacity import retry, stop_after_attempt, wait_exponential

from .spec import Webhook

log = logging.getLogger("chordflow.hooks")
KINDS = ("stage_start", "stage_complete", "stage_error", "run_complete")
Hook = Callable[[dict[str, Any]], Any]
_HOOKS: dict[str, list[Hook]] = {kind: [] for kind in KINDS}


def register(kind: str, fn: Hook) -> Hook:
    if kind not in _HOOKS:
        raise ValueError(f"unknown hook {kind!r}; hooks are {', '.join(KINDS)}")
    _HOOKS[kind].append(fn)
    return fn


def on_stage_start(fn: Hook) -> Hook:
    return register("stage_start", fn)


def on_stage_complete(fn: Hook) -> Hook:
    return register("stage_complete", fn)


def on_stage_error(fn: Hook) -> Hook:
    return register("stage_error", fn)


def on_run_complete(fn: Hook) -> Hook:
    return register("run_complete", fn)


def emit(kind: str, event: Mapping[str, Any], webhooks: Iterable[Webhook] = ()) -> None:
    """Call every hook of `kind`, then POST to every webhook that asked for it."""
    payload = {"kind": kind, **event}
    for fn in _HOOKS[kind]:
        try:
            fn(dict(payload))
        except Exception:
            log.exception("hook %s for %s raised; ignored", getattr(fn, "__name__", fn), kind)
    for hook in webhooks:
        if wants(hook, payload):
            try:
                post(hook, payload)
            except Exception as exc:
                log.error("webhook %s for %s failed after retries: %s", hook.url, kind, exc)


def wants(hook: Webhook, payload: Mapping[str, Any]) -> bool:
    kind = payload["kind"]
    names = {kind}
    if kind == "run_complete":
        names.add(f"run_{payload.get('status')}")  # run_failed, run_succeeded, run_cancelled
    return bool(names & set(hook.events)) or "*" in hook.events


def post(hook: Webhook, payload: Mapping[str, Any], attempts: int = 3) -> None:
    body = json.dumps(payload, default=str).encode()
    headers = {"Content-Type": "application/json", "User-Agent": "chordflow", **hook.headers}

    @retry(stop=stop_after_attempt(attempts), wait=wait_exponential(multiplier=0.2, max=2), reraise=True)
    def send() -> None:
        request = urllib.request.Request(hook.url, data=body, headers=headers, method="POST")
        with urllib.request.urlopen(request, timeout=hook.timeout) as response:
            response.read()

    send()
