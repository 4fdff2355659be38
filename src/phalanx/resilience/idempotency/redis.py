"""The Redis idempotency store: records on one Redis server that every process reaches.

This module owns :class:`RedisIdempotencyStore`, with the same rules (see :mod:`.store`) and
the same bounds as :class:`~.sqlite.SqliteIdempotencyStore` and
:class:`~.postgres.PostgresIdempotencyStore`. It needs redis-py (``pip install
'phalanx[redis]'``); the package imports this module only when the class is first used.

Key layout, under ``key_prefix`` (default ``phalanx:idem:``):

* ``<prefix>k:<key>``: a hash per record with the fields ``fingerprint``, ``state``,
  ``owner``, ``created_at_s``, ``expires_at_s``, ``lease_expires_at_s`` and ``result``
  (completed records only). Times are the caller's wall-clock seconds, written as Python's
  ``repr`` of the float so they read back exactly.
* ``<prefix>expiry``: a sorted set of every record's key scored by ``expires_at_s``; its size
  is the record count that ``entries_max`` bounds, and ``purge`` walks it.
* ``<prefix>completed``: a sorted set of the completed records' keys, scored the same way;
  making room evicts from its low end (the completed records closest to expiry).

Atomicity. Every method that decides is one Lua script, and Redis runs a script with nothing
interleaved, so a claim reads the record, applies the claim rules with the caller's ``now_s``
and writes, as one step: of any number of clients claiming one key, exactly one wins. Redis'
own clock decides nothing; each record also gets a Redis expiry (``PEXPIRE``) of its time to
live plus ``expiry_margin_s``, a safety net that deletes records nobody purges (the margin
absorbs clock skew between the callers and the server's pace).

Reruns. A client whose reply was lost may send a script again (redis-py retries on a lost
connection or a timeout, once for a client this store builds from a URL). The scripts are
safe to rerun: a claim that finds its own in-progress record (same owner token, fingerprint
and claim time) reports it acquired, and a ``complete`` that finds its own completed record
(same owner, result and expiry) reports success. Owner tokens are unique per execution, so
nothing else can look like a rerun.

Bounds: at most ``entries_max`` records, made room for as the SQLite store does (expired
records first, then the completed records closest to expiry; in-progress records never, and
:class:`phalanx.errors.Unavailable` when every record is in progress). The check runs inside
the claim script, so the bound is exact however many clients claim at once. A full store
deletes only as many records as the new one needs; ``purge`` deletes the rest in batches of
``PURGE_BATCH_MAX`` so that no script holds the server for long.
"""

from __future__ import annotations

import math
from types import TracebackType
from typing import TYPE_CHECKING, Any

from phalanx.errors import Unavailable, invariant
from phalanx.resilience.config import parse_count, parse_duration_s
from phalanx.resilience.idempotency.store import Claim, IdempotencyRecord, RecordState
from phalanx.resilience.redis_db import (
    KEY_PREFIX_CHARS_MAX,
    make_client,
    parse_key_prefix,
    text,
)

if TYPE_CHECKING:  # redis_db imports it at run time, with a hint when it is missing
    import redis

__all__ = [
    "CONNECT_TIMEOUT_S_MAX",
    "EXPIRY_MARGIN_S_MAX",
    "KEY_PREFIX_CHARS_MAX",
    "PURGE_BATCH_MAX",
    "SOCKET_TIMEOUT_S_MAX",
    "STALE_SCAN_MAX",
    "RedisIdempotencyStore",
]

CONNECT_TIMEOUT_S_MAX = 600.0
SOCKET_TIMEOUT_S_MAX = 3600.0
EXPIRY_MARGIN_S_MAX = 7 * 24 * 3600.0
#: Expired records one purge script deletes; ``purge`` runs as many scripts as it needs.
PURGE_BATCH_MAX = 500
#: Index entries a full store checks for records Redis already deleted (its expiry safety
#: net, ``maxmemory`` eviction, a manual ``DEL``) before reporting that it is full.
STALE_SCAN_MAX = 64

# KEYS: record, expiry index, completed index.
# ARGV: key, fingerprint, owner, now_s, expires_at_s, lease_expires_at_s, entries_max,
#       expiry_ms, prefix, stale_scan_max.
# Returns {1, took_over, evicted} when acquired, {0, 0, 0, <record fields>} when not, and
# {2, 0, 0} when the store is full of in-progress records.
_CLAIM = """
local rec, expiry, completed = KEYS[1], KEYS[2], KEYS[3]
local key, fp, owner, now_arg = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local now = tonumber(now_arg)
local f = redis.call('HMGET', rec, 'fingerprint', 'state', 'owner', 'created_at_s',
                     'expires_at_s', 'lease_expires_at_s', 'result')
local took_over = 0
local evicted = 0
if f[1] and tonumber(f[5]) > now then
  if f[2] == 'in_progress' and f[3] == owner and f[1] == fp and f[4] == now_arg then
    return {1, 0, 0}
  end
  if not (f[2] == 'in_progress' and tonumber(f[6]) <= now and f[1] == fp) then
    return {0, 0, 0, f[1], f[2], f[3], f[4], f[5], f[6], f[7] or false}
  end
  took_over = 1
elseif not f[1] then
  -- A new record: an index entry left for this key by a record Redis deleted is garbage.
  redis.call('ZREM', expiry, key)
  redis.call('ZREM', completed, key)
  local entries_max = tonumber(ARGV[7])
  local need = redis.call('ZCARD', expiry) - entries_max + 1
  if need > 0 then
    local prefix = ARGV[9]
    local function room()
      return redis.call('ZCOUNT', expiry, '-inf', now_arg)
        + redis.call('ZCARD', completed) - redis.call('ZCOUNT', completed, '-inf', now_arg)
    end
    if room() < need then
      for _, k in ipairs(redis.call('ZRANGE', expiry, 0, tonumber(ARGV[10]) - 1)) do
        if redis.call('EXISTS', prefix .. k) == 0 then
          redis.call('ZREM', expiry, k)
          redis.call('ZREM', completed, k)
          need = need - 1
        end
      end
      if need > 0 and room() < need then
        return {2, 0, 0}
      end
    end
    if need > 0 then
      for _, k in ipairs(redis.call('ZRANGEBYSCORE', expiry, '-inf', now_arg,
                                    'LIMIT', 0, need)) do
        redis.call('DEL', prefix .. k)
        redis.call('ZREM', expiry, k)
        redis.call('ZREM', completed, k)
        need = need - 1
        evicted = evicted + 1
      end
    end
    while need > 0 do
      local oldest = redis.call('ZPOPMIN', completed)
      redis.call('DEL', prefix .. oldest[1])
      redis.call('ZREM', expiry, oldest[1])
      need = need - 1
      evicted = evicted + 1
    end
  end
end
redis.call('DEL', rec)
redis.call('HSET', rec, 'fingerprint', fp, 'state', 'in_progress', 'owner', owner,
           'created_at_s', now_arg, 'expires_at_s', ARGV[5], 'lease_expires_at_s', ARGV[6])
redis.call('PEXPIRE', rec, ARGV[8])
redis.call('ZADD', expiry, ARGV[5], key)
redis.call('ZREM', completed, key)
return {1, took_over, evicted}
"""

# KEYS: record, expiry index, completed index.
# ARGV: key, owner, result, now_s, expires_at_s, expiry_ms.
_COMPLETE = """
local rec = KEYS[1]
local f = redis.call('HMGET', rec, 'owner', 'state', 'expires_at_s', 'result')
if f[1] ~= ARGV[2] then
  return 0
end
if f[2] == 'completed' then
  if f[3] == ARGV[5] and f[4] == ARGV[3] then
    return 1
  end
  return 0
end
if f[2] ~= 'in_progress' or tonumber(f[3]) <= tonumber(ARGV[4]) then
  return 0
end
redis.call('HSET', rec, 'state', 'completed', 'result', ARGV[3], 'expires_at_s', ARGV[5])
redis.call('PEXPIRE', rec, ARGV[6])
redis.call('ZADD', KEYS[2], ARGV[5], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[5], ARGV[1])
return 1
"""

# KEYS: record, expiry index, completed index. ARGV: key, owner.
_RELEASE = """
local f = redis.call('HMGET', KEYS[1], 'owner', 'state')
if f[1] ~= ARGV[2] or f[2] ~= 'in_progress' then
  return 0
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
return 1
"""

# KEYS: expiry index, completed index. ARGV: now_s, batch, prefix.
# Returns {records deleted, index entries visited}.
_PURGE = """
local keys = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
local deleted = 0
for _, k in ipairs(keys) do
  deleted = deleted + redis.call('DEL', ARGV[3] .. k)
  redis.call('ZREM', KEYS[1], k)
  redis.call('ZREM', KEYS[2], k)
end
return {deleted, #keys}
"""

_FIELDS = (
    "fingerprint",
    "state",
    "owner",
    "created_at_s",
    "expires_at_s",
    "lease_expires_at_s",
    "result",
)


def _num(value: float) -> str:
    # repr() of a float reads back as the same float in Python, Lua (tonumber) and Redis.
    return repr(float(value))


class RedisIdempotencyStore:
    """An :class:`~.store.IdempotencyStore` on a Redis server (5.0 or newer).

    ``client_or_url`` is a ``redis://``, ``rediss://`` or ``unix://`` URL, or a
    ``redis.Redis`` client (built from a Sentinel, with TLS settings, and so on) that does not
    decode responses. A client built from a URL uses ``connect_timeout_s`` and
    ``socket_timeout_s`` and is closed by :meth:`close`; a client passed in keeps its own
    settings and belongs to the caller. The constructor does not connect: the first call
    does.

    ``expiry_margin_s`` is added to a record's time to live for its Redis expiry, the safety
    net that deletes records nobody purges; keep it above the largest clock difference
    between the callers and the server.
    """

    def __init__(
        self,
        client_or_url: str | redis.Redis,
        *,
        key_prefix: str = "phalanx:idem:",
        entries_max: int | str = 1_000_000,
        expiry_margin_s: float | str = 300.0,
        connect_timeout_s: float | str = 5.0,
        socket_timeout_s: float | str = 5.0,
    ) -> None:
        self.key_prefix = parse_key_prefix(key_prefix)
        self.entries_max = parse_count("entries_max", entries_max, minimum=1)
        self.expiry_margin_s = parse_duration_s(
            "expiry_margin_s", expiry_margin_s, allow_zero=True, maximum_s=EXPIRY_MARGIN_S_MAX
        )
        self.connect_timeout_s = parse_duration_s(
            "connect_timeout_s", connect_timeout_s, maximum_s=CONNECT_TIMEOUT_S_MAX
        )
        self.socket_timeout_s = parse_duration_s(
            "socket_timeout_s", socket_timeout_s, maximum_s=SOCKET_TIMEOUT_S_MAX
        )
        # One rerun after a lost connection or a timeout: the scripts are safe to rerun.
        self._client, self._owns_client = make_client(
            client_or_url,
            connect_timeout_s=self.connect_timeout_s,
            socket_timeout_s=self.socket_timeout_s,
            reruns=1,
        )
        if self._client.connection_pool.connection_kwargs.get("decode_responses"):
            raise ValueError(
                "client_or_url: the client decodes responses (decode_responses=True); results "
                "are bytes, so pass a client without it"
            )
        self.evictions = 0
        self._records_prefix = f"{self.key_prefix}k:"
        self._expiry_key = f"{self.key_prefix}expiry"
        self._completed_key = f"{self.key_prefix}completed"
        self._claim = self._client.register_script(_CLAIM)
        self._complete = self._client.register_script(_COMPLETE)
        self._release = self._client.register_script(_RELEASE)
        self._purge = self._client.register_script(_PURGE)

    def __repr__(self) -> str:
        return (
            f"RedisIdempotencyStore(key_prefix={self.key_prefix!r}, entries_max={self.entries_max})"
        )

    @property
    def client(self) -> redis.Redis:
        """The redis-py client this store talks through."""
        return self._client

    def record_key(self, key: str) -> str:
        """The Redis key holding the record of ``key``."""
        return self._records_prefix + key

    def close(self) -> None:
        """Close the client if this store built it from a URL."""
        if self._owns_client:
            self._client.close()

    def __enter__(self) -> RedisIdempotencyStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __len__(self) -> int:
        """Records counted against ``entries_max`` (expired ones until they are purged)."""
        return int(self._client.zcard(self._expiry_key))

    def claim(
        self, key: str, fingerprint: str, owner: str, *, now_s: float, lease_s: float, ttl_s: float
    ) -> Claim:
        expires_at_s = now_s + ttl_s
        lease_expires_at_s = now_s + lease_s
        reply = self._claim(
            keys=[self.record_key(key), self._expiry_key, self._completed_key],
            args=[
                key,
                fingerprint,
                owner,
                _num(now_s),
                _num(expires_at_s),
                _num(lease_expires_at_s),
                self.entries_max,
                self._expiry_ms(ttl_s),
                self._records_prefix,
                STALE_SCAN_MAX,
            ],
        )
        status, took_over, evicted = int(reply[0]), int(reply[1]), int(reply[2])
        if status == 2:
            raise Unavailable(
                f"idempotency store full: all {self.entries_max} records (entries_max) "
                "are in progress"
            )
        if status == 0:
            return Claim(acquired=False, record=self._record(key, reply[3:]))
        invariant(status == 1, f"claim script returned status {status}")
        self.evictions += evicted
        record = IdempotencyRecord(
            key=key,
            fingerprint=fingerprint,
            state=RecordState.IN_PROGRESS,
            owner=owner,
            created_at_s=now_s,
            expires_at_s=expires_at_s,
            lease_expires_at_s=lease_expires_at_s,
        )
        return Claim(acquired=True, record=record, took_over=bool(took_over))

    def complete(self, key: str, owner: str, result: bytes, *, now_s: float, ttl_s: float) -> bool:
        reply = self._complete(
            keys=[self.record_key(key), self._expiry_key, self._completed_key],
            args=[
                key,
                owner,
                bytes(result),
                _num(now_s),
                _num(now_s + ttl_s),
                self._expiry_ms(ttl_s),
            ],
        )
        return int(reply) == 1

    def release(self, key: str, owner: str) -> bool:
        reply = self._release(
            keys=[self.record_key(key), self._expiry_key, self._completed_key],
            args=[key, owner],
        )
        return int(reply) == 1

    def get(self, key: str, *, now_s: float) -> IdempotencyRecord | None:
        values = self._client.hmget(self.record_key(key), list(_FIELDS))
        if values[0] is None:
            return None
        record = self._record(key, values)
        return None if record.is_expired(now_s) else record

    def purge(self, *, now_s: float) -> int:
        deleted = 0
        while True:
            reply = self._purge(
                keys=[self._expiry_key, self._completed_key],
                args=[_num(now_s), PURGE_BATCH_MAX, self._records_prefix],
            )
            deleted += int(reply[0])
            if int(reply[1]) < PURGE_BATCH_MAX:
                return deleted

    def _expiry_ms(self, ttl_s: float) -> int:
        return max(1, math.ceil((ttl_s + self.expiry_margin_s) * 1000))

    @staticmethod
    def _record(key: str, values: list[Any]) -> IdempotencyRecord:
        fingerprint, state, owner, created, expires, lease, result = values
        return IdempotencyRecord(
            key=key,
            fingerprint=text(fingerprint),
            state=RecordState(text(state)),
            owner=text(owner),
            created_at_s=float(created),
            expires_at_s=float(expires),
            lease_expires_at_s=float(lease),
            result=None if result is None or result is False else bytes(result),
        )
