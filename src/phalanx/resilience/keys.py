"""The idempotency key of the current call, carried in a context variable.

Retrying a call that is not idempotent can apply it twice. :class:`~phalanx.resilience.Retry`
therefore refuses to retry an ``idempotent=False`` call after an indeterminate failure unless
the call carries an idempotency key, which lets the server deduplicate it. Set the key with
:func:`idempotency_key` around the call (clients put it into the ``Idempotency-Key`` header).
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["current_idempotency_key", "idempotency_key"]

IDEMPOTENCY_KEY_BYTES_MAX = 255

_KEY: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "phalanx_idempotency_key", default=None
)


def current_idempotency_key() -> str | None:
    """The idempotency key set by the innermost :func:`idempotency_key` block, if any."""
    return _KEY.get()


@contextmanager
def idempotency_key(key: str) -> Iterator[str]:
    """Mark every call inside the block as carrying ``key``."""
    if not isinstance(key, str) or not key:
        raise ValueError("key: an idempotency key must be a non-empty string")
    if len(key.encode()) > IDEMPOTENCY_KEY_BYTES_MAX:
        raise ValueError(f"key: longer than {IDEMPOTENCY_KEY_BYTES_MAX} bytes")
    token = _KEY.set(key)
    try:
        yield key
    finally:
        _KEY.reset(token)
