"""Snapshots of the whole state machine: keyspace with history, leases, sessions, event log.

The image is one ``msgspec`` struct encoded with MessagePack. Every collection is written in
a defined order (keys sorted, leases by id, lease keys sorted, sessions least recently used
first, cached responses by sequence number, events in log order), so two replicas in the same
state produce the same bytes, and a restored store snapshots to the bytes it was restored from.
Restoring checks the image's invariants before replacing anything.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import msgspec

from phalanx.errors import InvariantViolation, invariant
from phalanx.kv.lease import Lease
from phalanx.kv.responses import KeyValue, Response
from phalanx.kv.session import Session
from phalanx.kv.watch import Event

if TYPE_CHECKING:
    from phalanx.kv.store import KVStore

__all__ = [
    "FORMAT",
    "Image",
    "LeaseImage",
    "SessionImage",
    "encode_chunks",
    "image_of",
    "restore_into",
    "take",
]

#: Bumped when the image layout changes.
FORMAT = 1


class LeaseImage(msgspec.Struct, frozen=True, array_like=True):
    lease_id: int
    ttl_ms: int
    deadline_ms: int
    keys: tuple[bytes, ...]


class SessionImage(msgspec.Struct, frozen=True, array_like=True):
    client_id: int
    last_active_ms: int
    acked_seq: int
    responses: tuple[tuple[int, Response], ...]


class Image(msgspec.Struct, frozen=True, array_like=True):
    format: int
    applied_index: int
    revision: int
    compact_revision: int
    clock_ms: int
    histories: tuple[tuple[KeyValue, ...], ...]
    leases: tuple[LeaseImage, ...]
    sessions: tuple[SessionImage, ...]
    events: tuple[Event, ...]
    event_floor_revision: int


_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(Image)


def image_of(store: KVStore) -> Image:
    return Image(
        format=FORMAT,
        applied_index=store.applied_index,
        revision=store.revision,
        compact_revision=store.compact_revision,
        clock_ms=store.clock_ms,
        histories=tuple(tuple(hist) for hist in store.histories()),
        leases=tuple(
            LeaseImage(lease.lease_id, lease.ttl_ms, lease.deadline_ms, tuple(sorted(lease.keys)))
            for lease in store.leases.leases()
        ),
        sessions=tuple(
            SessionImage(
                session.client_id,
                session.last_active_ms,
                session.acked_seq,
                tuple(sorted(session.responses.items(), key=lambda item: item[0])),
            )
            for session in store.sessions.sessions()
        ),
        events=tuple(store.events.events()),
        event_floor_revision=store.events.floor_revision,
    )


def take(store: KVStore) -> bytes:
    """The snapshot bytes of ``store``."""
    return _ENCODER.encode(image_of(store))


#: Histories or events encoded per chunk by :func:`encode_chunks`.
CHUNK_ITEMS = 512
_LONG_FIELDS = frozenset({"histories", "events"})


def _array_header(length: int) -> bytes:
    if length < 16:
        return bytes([0x90 | length])
    if length < 1 << 16:
        return b"\xdc" + length.to_bytes(2, "big")
    return b"\xdd" + length.to_bytes(4, "big")


def encode_chunks(image: Image, chunk_items: int = CHUNK_ITEMS) -> Iterator[bytes]:
    """The bytes of ``take`` for ``image``, a piece at a time (MessagePack arrays are their
    header followed by their items), so a caller can encode a large state without holding
    its event loop for the whole of it: ``b"".join(encode_chunks(image_of(store)))`` equals
    ``take(store)``. ``image`` is immutable, so the store may change meanwhile."""
    names = image.__struct_fields__
    yield _array_header(len(names))
    for name in names:
        value = getattr(image, name)
        if name not in _LONG_FIELDS:
            yield _ENCODER.encode(value)
            continue
        yield _array_header(len(value))
        for start in range(0, len(value), chunk_items):
            yield b"".join(_ENCODER.encode(item) for item in value[start : start + chunk_items])


def _check(image: Image) -> None:
    invariant(image.format == FORMAT, f"snapshot format {image.format}, expected {FORMAT}")
    invariant(image.compact_revision <= image.revision, "compact revision above revision")
    previous = b""
    for hist in image.histories:
        invariant(bool(hist), "a key with no history")
        key = hist[0].key
        invariant(key > previous, "snapshot keys out of order")
        previous = key
        revisions = [kv.mod_revision for kv in hist]
        invariant(revisions == sorted(set(revisions)), f"history of {key!r} out of order")
        invariant(revisions[-1] <= image.revision, f"history of {key!r} above the revision")
        invariant(all(kv.key == key for kv in hist), f"history of {key!r} mixes keys")
    event_revisions = [event.revision for event in image.events]
    invariant(event_revisions == sorted(event_revisions), "events out of order")


def restore_into(store: KVStore, data: bytes) -> None:
    """Replace ``store``'s state with the snapshot ``data``.

    Raises :class:`~phalanx.errors.InvariantViolation` (and changes nothing) if the bytes are
    not a valid image: a snapshot comes from a replica, so a bad one is a bug or corruption.
    """
    try:
        image = _DECODER.decode(data)
    except msgspec.DecodeError as exc:
        raise InvariantViolation(f"undecodable snapshot: {exc}") from None
    _check(image)
    store.applied_index = image.applied_index
    store.revision = image.revision
    store.compact_revision = image.compact_revision
    store.clock_ms = image.clock_ms
    store.load_histories([list(hist) for hist in image.histories])
    store.leases = type(store.leases)(store.limits)
    for item in image.leases:
        lease = Lease(item.lease_id, item.ttl_ms, item.deadline_ms)
        lease.keys = set(item.keys)
        store.leases.restore(lease)
    store.sessions = type(store.sessions)(store.limits)
    for entry in image.sessions:
        session = Session(entry.client_id, entry.last_active_ms)
        session.acked_seq = entry.acked_seq
        session.responses = dict(entry.responses)
        store.sessions.restore(session)
    store.events.load(list(image.events), image.event_floor_revision)
