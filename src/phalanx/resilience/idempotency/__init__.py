"""Idempotency keys: run an operation at most once per key and replay its result.

The package owns the store contract (:mod:`.store`), four stores (:mod:`.memory`,
:mod:`.sqlite`, :mod:`.postgres`, :mod:`.redis`), request fingerprints (:mod:`.fingerprint`),
the executor for library code (:mod:`.guard`) and the ASGI middleware for HTTP services
(:mod:`.asgi`). See ``docs/resilience-idempotency.md`` for the cases, limits and failure modes.

:class:`PostgresIdempotencyStore` and :class:`RedisIdempotencyStore` are imported on first
use, so the package works without psycopg (the ``postgres`` extra) or redis-py (the ``redis``
extra) installed.
"""

from typing import TYPE_CHECKING

from phalanx.resilience.idempotency.asgi import (
    IdempotencyMiddleware,
    StoredResponse,
    decode_response,
    definitive_status,
    encode_response,
    success_status,
)
from phalanx.resilience.idempotency.client import (
    IDEMPOTENCY_HEADER,
    asend_idempotency_key,
    send_idempotency_key,
)
from phalanx.resilience.idempotency.fingerprint import fingerprint_call, fingerprint_request
from phalanx.resilience.idempotency.guard import (
    FingerprintMismatch,
    Idempotency,
    IdempotencyStatistics,
    KeyInProgress,
    Ticket,
    scoped_key,
    validate_key,
)
from phalanx.resilience.idempotency.memory import MemoryIdempotencyStore
from phalanx.resilience.idempotency.sqlite import SqliteIdempotencyStore
from phalanx.resilience.idempotency.store import (
    Claim,
    IdempotencyRecord,
    IdempotencyStore,
    RecordState,
)

if TYPE_CHECKING:
    from phalanx.resilience.idempotency.postgres import PostgresIdempotencyStore
    from phalanx.resilience.idempotency.redis import RedisIdempotencyStore

__all__ = [
    "IDEMPOTENCY_HEADER",
    "Claim",
    "FingerprintMismatch",
    "Idempotency",
    "IdempotencyMiddleware",
    "IdempotencyRecord",
    "IdempotencyStatistics",
    "IdempotencyStore",
    "KeyInProgress",
    "MemoryIdempotencyStore",
    "PostgresIdempotencyStore",
    "RecordState",
    "RedisIdempotencyStore",
    "SqliteIdempotencyStore",
    "StoredResponse",
    "Ticket",
    "asend_idempotency_key",
    "decode_response",
    "definitive_status",
    "encode_response",
    "fingerprint_call",
    "fingerprint_request",
    "scoped_key",
    "send_idempotency_key",
    "success_status",
    "validate_key",
]


def __getattr__(name: str) -> object:
    if name == "PostgresIdempotencyStore":
        from phalanx.resilience.idempotency.postgres import PostgresIdempotencyStore

        return PostgresIdempotencyStore
    if name == "RedisIdempotencyStore":
        from phalanx.resilience.idempotency.redis import RedisIdempotencyStore

        return RedisIdempotencyStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
