"""Shared circuit-breaker state on Redis, so that breakers on several machines open together.

This module owns :class:`RedisBreakerStore`, the multi-machine sibling of
:class:`~phalanx.resilience.breaker_store.SQLiteBreakerStore` with the same semantics (see
:mod:`phalanx.resilience.breaker_store`). It needs redis-py (``pip install
'phalanx[redis]'``); nothing in :mod:`phalanx.resilience` imports it.

Key layout: one hash per breaker, ``<key_prefix><name>`` (default ``phalanx:breaker:``), with
the fields ``state``, ``version``, ``updated_wall_s`` and, unless the breaker was forced open,
``open_until_wall_s``. Times are written as Python's ``repr`` of the float, so they read back
exactly. The hashes have no Redis expiry: there is one per breaker name, as with SQLite.

Atomicity. :meth:`~RedisBreakerStore.load` is one ``HMGET``. ``compare_and_set`` is a Lua
script: it reads ``version`` (a missing hash counts as 0), writes the new fields with the next
version only when the stored one equals ``expected_version``, and otherwise returns the
current hash. Redis runs a script with nothing interleaved, so the check and the write are one
step for every client of the server.

Failures. Every Redis error (connection refused, a timeout, a read-only replica after a
failover) propagates as a ``redis.exceptions.RedisError``; the breaker logs it and keeps
deciding from its own window, as it does when a SQLite store fails. A client built from a URL
does not retry (``refresh_interval_s`` paces the next attempt) and gives up after
``connect_timeout_s`` or ``socket_timeout_s``, which therefore bound how long a call that
refreshes the breaker can wait on Redis.
"""

from __future__ import annotations

import dataclasses
from types import TracebackType
from typing import TYPE_CHECKING, Any

from phalanx.resilience.breaker_store import BreakerRecord, _check_name
from phalanx.resilience.config import parse_duration_s
from phalanx.resilience.redis_db import (
    KEY_PREFIX_CHARS_MAX,
    make_client,
    parse_key_prefix,
    text,
)

if TYPE_CHECKING:  # redis_db imports it at run time, with a hint when it is missing
    import redis

__all__ = [
    "KEY_PREFIX_CHARS_MAX",
    "TIMEOUT_S_MAX",
    "RedisBreakerStore",
]

#: Upper limit of ``connect_timeout_s`` and ``socket_timeout_s``: a breaker that waits longer
#: on its shared store than on the dependency it protects defeats its purpose.
TIMEOUT_S_MAX = 60.0

_FIELDS = ("state", "version", "open_until_wall_s", "updated_wall_s")

# KEYS: the breaker's hash. ARGV: expected_version, state, open_until_wall_s ('' for none),
# updated_wall_s. Returns {1, version} when written, else {0, state, version, open_until,
# updated} (the record that won).
_COMPARE_AND_SET = """
local current = redis.call('HGET', KEYS[1], 'version')
local expected = tonumber(ARGV[1])
if current and tonumber(current) ~= expected then
  local f = redis.call('HMGET', KEYS[1], 'state', 'version', 'open_until_wall_s',
                       'updated_wall_s')
  return {0, f[1], f[2], f[3] or false, f[4]}
end
local version = 1
if current then
  version = expected + 1
end
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'version', version, 'updated_wall_s', ARGV[4])
if ARGV[3] == '' then
  redis.call('HDEL', KEYS[1], 'open_until_wall_s')
else
  redis.call('HSET', KEYS[1], 'open_until_wall_s', ARGV[3])
end
return {1, version}
"""


def _record(values: list[Any]) -> BreakerRecord:
    state, version, open_until, updated = values
    return BreakerRecord(
        state=text(state),
        version=int(version),
        open_until_wall_s=None if open_until is None else float(open_until),
        updated_wall_s=float(updated),
    )


class RedisBreakerStore:
    """A :class:`~phalanx.resilience.breaker_store.BreakerStore` on a Redis server.

    ``client_or_url`` is a ``redis://``, ``rediss://`` or ``unix://`` URL, or a
    ``redis.Redis`` client (from a Sentinel, with TLS settings, decoding responses or not).
    A client built from a URL uses ``connect_timeout_s`` and ``socket_timeout_s``, never
    retries, and is closed by :meth:`close`; a client passed in keeps its own settings and
    belongs to the caller. The constructor does not connect, so a breaker can be built while
    Redis is down: it decides locally until Redis answers.
    """

    def __init__(
        self,
        client_or_url: str | redis.Redis,
        *,
        key_prefix: str = "phalanx:breaker:",
        connect_timeout_s: float | str = 1.0,
        socket_timeout_s: float | str = 1.0,
    ) -> None:
        self.key_prefix = parse_key_prefix(key_prefix)
        self.connect_timeout_s = parse_duration_s(
            "connect_timeout_s", connect_timeout_s, maximum_s=TIMEOUT_S_MAX
        )
        self.socket_timeout_s = parse_duration_s(
            "socket_timeout_s", socket_timeout_s, maximum_s=TIMEOUT_S_MAX
        )
        # No reruns: the breaker's next refresh is the retry.
        self._client, self._owns_client = make_client(
            client_or_url,
            connect_timeout_s=self.connect_timeout_s,
            socket_timeout_s=self.socket_timeout_s,
            reruns=0,
        )
        self._compare_and_set = self._client.register_script(_COMPARE_AND_SET)

    def __repr__(self) -> str:
        return f"RedisBreakerStore(key_prefix={self.key_prefix!r})"

    @property
    def client(self) -> redis.Redis:
        """The redis-py client this store talks through."""
        return self._client

    def key(self, name: str) -> str:
        """The Redis key of the hash that holds breaker ``name``."""
        return self.key_prefix + _check_name(name)

    def close(self) -> None:
        """Close the client if this store built it from a URL."""
        if self._owns_client:
            self._client.close()

    def __enter__(self) -> RedisBreakerStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def load(self, name: str) -> BreakerRecord | None:
        values = self._client.hmget(self.key(name), list(_FIELDS))
        if values[1] is None:
            return None
        return _record(values)

    def compare_and_set(
        self, name: str, expected_version: int, record: BreakerRecord
    ) -> tuple[bool, BreakerRecord]:
        key = self.key(name)
        open_until = (
            "" if record.open_until_wall_s is None else repr(float(record.open_until_wall_s))
        )
        reply = self._compare_and_set(
            keys=[key],
            args=[
                int(expected_version),
                record.state,
                open_until,
                repr(float(record.updated_wall_s)),
            ],
        )
        if int(reply[0]) == 1:
            return True, dataclasses.replace(record, version=int(reply[1]))
        return False, _record(reply[1:])
