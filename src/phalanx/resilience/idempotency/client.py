"""The client side of idempotency keys: send the current key as a request header.

Inside ``with idempotency_key("order-42"):`` every request made through an HTTP client with
these hooks carries ``Idempotency-Key: order-42``, and a :class:`~phalanx.resilience.Retry`
with ``idempotent=False`` may retry it, because the server
(:class:`~phalanx.resilience.idempotency.IdempotencyMiddleware`) replays the first answer
instead of running the request twice::

    client = httpx.Client(event_hooks={"request": [send_idempotency_key]})
    aclient = httpx.AsyncClient(event_hooks={"request": [asend_idempotency_key]})

The hooks only need a request object with a mutable ``headers`` mapping, so they work with
httpx and anything shaped like it. A header the caller set explicitly is left alone.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Protocol

from phalanx.resilience.keys import current_idempotency_key

__all__ = ["IDEMPOTENCY_HEADER", "asend_idempotency_key", "send_idempotency_key"]

IDEMPOTENCY_HEADER = "Idempotency-Key"


class RequestLike(Protocol):
    @property
    def headers(self) -> MutableMapping[str, str]: ...


def send_idempotency_key(request: RequestLike) -> None:
    """Add the current idempotency key (if any) to ``request`` as ``Idempotency-Key``."""
    key = current_idempotency_key()
    if key is not None and IDEMPOTENCY_HEADER not in request.headers:
        request.headers[IDEMPOTENCY_HEADER] = key


async def asend_idempotency_key(request: RequestLike) -> None:
    """:func:`send_idempotency_key` for async clients, whose hooks must be coroutines."""
    send_idempotency_key(request)
