"""A webhook's POST on the wire: urllib with http(s)-only redirects, retried with backoff (tenacity).

`hooks.post` builds the request (payload, credentials, headers) and calls `send`; this module is
imported only then, so a worker's pool processes, which never post, load neither urllib.request
nor tenacity.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from typing import Any

from tenacity import retry, retry_if_exception, stop_before_delay, wait_exponential

from orchestration.engine.hooks import WebhookRefused, refusal
from orchestration.engine.redis_url import mask


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follow a redirect only to another http:// or https:// URL (urllib would follow ftp://)."""

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> Any:
        why = refusal(newurl)
        if why is not None:
            raise WebhookRefused(f"redirect to {mask(newurl)} refused: {why}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_HttpOnlyRedirects)


def _retryable(exc: BaseException) -> bool:
    """Worth another POST: network errors, timeouts, 5xx, 408 and 429; not other 4xx."""
    if isinstance(exc, urllib.error.HTTPError):
        return exc.code >= 500 or exc.code in (408, 429)
    return isinstance(exc, OSError)


def send(url: str, body: bytes, headers: dict[str, str], timeout_s: float, total_s: float) -> None:
    """POST `body` to `url`, each try bounded by `timeout_s`, retried with backoff until it succeeds
    or another try would start after `total_s` seconds; raises the last error."""

    @retry(
        stop=stop_before_delay(total_s),
        wait=wait_exponential(multiplier=0.5, max=10),
        retry=retry_if_exception(_retryable),
        reraise=True,
    )
    def once() -> None:
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        with _OPENER.open(request, timeout=timeout_s) as response:
            response.read()

    once()
