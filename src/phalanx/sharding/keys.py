"""Shard keys and the one hash every strategy uses.

A shard key is ``str`` (encoded as UTF-8) or ``bytes``; the two spellings of the same text
land on the same shard. :func:`hash64` is BLAKE2b cut to 64 bits: stable across processes,
machines and Python versions (unlike the built-in ``hash``, which is salted per process),
and well spread even for keys that differ in one character.
"""

from __future__ import annotations

import hashlib
from typing import Final

__all__ = ["HASH_BITS", "KEY_BYTES_MAX", "Key", "hash64", "key_bytes", "mix64"]

Key = str | bytes

#: The width of every hash value: positions on a ring, jump-hash input, rendezvous scores.
HASH_BITS: Final = 64
#: Longest shard key accepted: keys are row identifiers, not payloads.
KEY_BYTES_MAX: Final = 4096

_MASK64: Final = (1 << 64) - 1
_blake2b = hashlib.blake2b
_from_bytes = int.from_bytes


def key_bytes(key: Key) -> bytes:
    """The bytes of ``key``; rejects other types and keys over :data:`KEY_BYTES_MAX`."""
    if isinstance(key, bytes):
        raw = key
    elif isinstance(key, str):
        raw = key.encode()
    else:
        raise TypeError(f"key: expected str or bytes, got {type(key).__name__}")
    if len(raw) > KEY_BYTES_MAX:
        raise ValueError(f"key: {len(raw)} bytes is over KEY_BYTES_MAX ({KEY_BYTES_MAX})")
    return raw


def hash64(key: Key) -> int:
    """A 64-bit hash of ``key`` (BLAKE2b, 8-byte digest, little-endian)."""
    raw = key.encode() if isinstance(key, str) else key
    return _from_bytes(_blake2b(raw, digest_size=8).digest(), "little")


def mix64(value: int) -> int:
    """The SplitMix64 finaliser: a cheap bijective scramble of a 64-bit integer."""
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)
