"""The tiny key-value state machine the simulated cluster replicates.

A put entry's data is ``b"<op id> <key> <value>"`` (keys and values have no spaces). The
state machine remembers the operation ids it applied and applies each at most once: a
duplicated network message can make a leader append the same forwarded proposal twice, and
a real service deduplicates by client request id the same way. Empty entries (a new
leader's no-op) change nothing.

Snapshots encode the whole state with msgspec.
"""

from __future__ import annotations

import msgspec

from phalanx.raft.types import Entry, EntryType

__all__ = ["KvStateMachine", "decode_put", "encode_put", "put_value"]


def encode_put(op_id: int, key: str, value: str) -> bytes:
    return f"{op_id} {key} {value}".encode()


def decode_put(data: bytes) -> tuple[int, str, str]:
    op_id, key, value = data.decode().split(" ")
    return int(op_id), key, value


def put_value(entry: Entry) -> str | None:
    """The value a put entry writes, or None for other entries."""
    if entry.type != EntryType.NORMAL or not entry.data:
        return None
    return decode_put(entry.data)[2]


class _State(msgspec.Struct, array_like=True):
    index: int
    data: dict[str, str]
    ops: list[int]


class KvStateMachine:
    """``key -> value`` plus the ids of the operations applied, and the last applied index."""

    __slots__ = ("applied", "data", "ops")

    def __init__(self) -> None:
        self.applied = 0
        self.data: dict[str, str] = {}
        self.ops: set[int] = set()

    def apply(self, entry: Entry) -> tuple[int, str, str] | None:
        """Apply a committed entry; return the put it carried (op id, key, value), if any."""
        self.applied = entry.index
        if entry.type != EntryType.NORMAL or not entry.data:
            return None
        op_id, key, value = decode_put(entry.data)
        if op_id not in self.ops:
            self.ops.add(op_id)
            self.data[key] = value
        return op_id, key, value

    def snapshot(self) -> bytes:
        return msgspec.msgpack.encode(_State(self.applied, self.data, sorted(self.ops)))

    def restore(self, data: bytes, index: int) -> None:
        state = msgspec.msgpack.decode(data, type=_State) if data else _State(index, {}, [])
        self.applied = index
        self.data = dict(state.data)
        self.ops = set(state.ops)
