"""Connecting to the Redis server that backs shared state (breaker records, idempotency keys).

Needs redis-py (the ``redis`` extra). Stores take either a URL, for which they build and own
a client, or a ``redis.Redis`` client the caller owns.
"""

from __future__ import annotations

from typing import Any

try:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry
except ImportError as exc:  # pragma: no cover - only without the optional extra
    raise ImportError("the Redis stores need redis-py: pip install 'phalanx[redis]'") from exc

__all__ = ["KEY_PREFIX_CHARS_MAX", "make_client", "parse_key_prefix", "text"]

#: Longest ``key_prefix`` a store accepts.
KEY_PREFIX_CHARS_MAX = 100


def parse_key_prefix(key_prefix: object) -> str:
    """``key_prefix`` if it is a non-empty string of at most :data:`KEY_PREFIX_CHARS_MAX`."""
    if not isinstance(key_prefix, str) or not key_prefix:
        raise ValueError(f"key_prefix: expected a non-empty string, got {key_prefix!r}")
    if len(key_prefix) > KEY_PREFIX_CHARS_MAX:
        raise ValueError(
            f"key_prefix: at most {KEY_PREFIX_CHARS_MAX} characters (KEY_PREFIX_CHARS_MAX), "
            f"got {len(key_prefix)}"
        )
    return key_prefix


def make_client(
    client_or_url: object,
    *,
    connect_timeout_s: float,
    socket_timeout_s: float,
    reruns: int,
) -> tuple[redis.Redis, bool]:
    """The client to use and whether the store owns (and so closes) it.

    A client built from a URL reruns a command ``reruns`` times after a lost connection or a
    timeout, with no backoff: only stores whose commands are safe to rerun ask for reruns.
    """
    field = "client_or_url"
    if isinstance(client_or_url, str):
        if not client_or_url.strip():
            raise ValueError(f"{field}: empty URL; pass e.g. 'redis://cache.internal:6379/0'")
        try:
            client = redis.Redis.from_url(
                client_or_url,
                socket_connect_timeout=connect_timeout_s,
                socket_timeout=socket_timeout_s,
                retry=Retry(NoBackoff(), reruns),
                retry_on_timeout=reruns > 0,
            )
        except ValueError:
            # redis-py's message may quote the URL, which can hold a password.
            raise ValueError(
                f"{field}: malformed Redis URL; expected redis://, rediss:// or unix://"
            ) from None
        return client, True
    if isinstance(client_or_url, redis.Redis):
        return client_or_url, False
    raise ValueError(
        f"{field}: expected a redis:// URL or a redis.Redis client, "
        f"got {type(client_or_url).__name__}"
    )


def text(value: Any) -> str:
    """A reply field as text (replies are bytes unless the client decodes them)."""
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
