"""Stage output caching: the key is a pure function of what determines the output."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any


def digest(value: Any) -> str:
    return hashlib.sha256(
        json.dumps(value, sort_keys=True, separators=(",", ":"), default=str).encode()
    ).hexdigest()


def cache_key(
    type_name: str,
    type_version: str,
    params: Mapping[str, Any],
    inputs: Mapping[str, Any],
    item: Any = None,
    run: Any = None,
) -> str:
    """Same stage type and version, params, input digests (and item, and command) → same key."""
    parts = {
        "type": type_name,
        "version": type_version,
        "params": digest(params),
        "inputs": {name: digest(value) for name, value in sorted(inputs.items())},
        "item": digest(item),
        "run": digest(run),
    }
    return digest(parts)
