"""Stable fingerprints of requests and calls.

A fingerprint says "this is the same request": the store keeps the fingerprint of the first
request made with a key and rejects a later request that reuses the key with a different one.
It must therefore be stable across processes and restarts: a SHA-256 over an unambiguous
encoding, never ``hash()`` (salted per process) or ``repr()`` of arbitrary objects (which may
contain memory addresses).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["fingerprint_call", "fingerprint_request"]


def _length_prefixed(*parts: bytes) -> bytes:
    # Prefixing each part with its length keeps ("ab", "c") and ("a", "bc") apart.
    return b"".join(len(part).to_bytes(8, "big") + part for part in parts)


def fingerprint_request(method: str, path: str, body: bytes, *, query: bytes = b"") -> str:
    """The fingerprint of an HTTP request: method, path, query string and body."""
    data = _length_prefixed(
        b"http", method.upper().encode("ascii"), path.encode("utf-8"), query, body
    )
    return "sha256:" + hashlib.sha256(data).hexdigest()


def fingerprint_call(fn: Callable[..., Any], args: Sequence[Any], kwargs: Mapping[str, Any]) -> str:
    """The fingerprint of a call: the function's qualified name and its arguments.

    Arguments must be JSON-encodable (dicts are compared with sorted keys). For anything
    else pass an explicit ``fingerprint=`` to the executor: guessing from ``repr`` would make
    equal requests look different, which turns every retry into a rejected mismatch.
    """
    name = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"
    try:
        encoded = json.dumps(
            [list(args), dict(kwargs)], sort_keys=True, separators=(",", ":"), allow_nan=False
        )
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"fingerprint: the arguments of {name} are not JSON-encodable ({exc}); "
            "pass fingerprint= explicitly"
        ) from exc
    data = _length_prefixed(b"call", name.encode("utf-8"), encoded.encode("utf-8"))
    return "sha256:" + hashlib.sha256(data).hexdigest()
