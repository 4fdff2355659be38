"""The framing shared by WAL segments and snapshot files: a checked header, then a payload.

A frame is a 16-byte header followed by ``length`` payload bytes::

    offset  size  field
    0       4     header_crc   CRC-32 (zlib) of bytes 4..16
    4       4     length       payload bytes, little-endian
    8       1     type         record type, never 0
    9       3     zero
    12      4     payload_crc  CRC-32 (zlib) of the payload

The header has its own checksum so that a damaged ``length`` is never trusted: without it a
flipped bit in the length of a record in the middle of the log would look like a record
running past the end of the file, that is like a torn tail, and everything after it would be
dropped. With it, a frame is either intact, or damaged, or visibly cut short.
"""

from __future__ import annotations

import enum
import struct
import zlib
from dataclasses import dataclass

__all__ = ["HEADER_BYTES", "Damage", "Frame", "encode_frame", "read_frame"]

_CRC = struct.Struct("<I")
_BODY = struct.Struct("<IB3xI")
HEADER_BYTES = _CRC.size + _BODY.size


def encode_frame(frame_type: int, payload: bytes) -> bytes:
    """The bytes of one frame."""
    body = _BODY.pack(len(payload), frame_type, zlib.crc32(payload))
    return _CRC.pack(zlib.crc32(body)) + body + payload


class Damage(enum.Enum):
    """Why a frame could not be read, from "cut short" to "damaged in place"."""

    SHORT_HEADER = "the header is cut short"
    SHORT_PAYLOAD = "the payload is cut short"
    HEADER_CRC = "the header checksum does not match"
    PAYLOAD_CRC = "the payload checksum does not match"
    BAD_TYPE = "the record type is unknown"
    TOO_LONG = "the record is longer than record_bytes_max"


@dataclass(frozen=True, slots=True)
class Frame:
    """A frame read at ``offset``: its type and payload, or the damage found there."""

    offset: int
    end: int
    frame_type: int = 0
    payload: bytes = b""
    damage: Damage | None = None


def read_frame(buffer: bytes, offset: int, payload_bytes_max: int) -> Frame:
    """The frame starting at ``offset`` of ``buffer`` (which must hold at least one byte there).

    A damaged frame's ``end`` is where its payload would end when the header can be trusted,
    else the end of ``buffer``.
    """
    size = len(buffer)
    if size - offset < HEADER_BYTES:
        return Frame(offset, size, damage=Damage.SHORT_HEADER)
    (header_crc,) = _CRC.unpack_from(buffer, offset)
    body_start = offset + _CRC.size
    if zlib.crc32(buffer[body_start : offset + HEADER_BYTES]) != header_crc:
        return Frame(offset, size, damage=Damage.HEADER_CRC)
    length, frame_type, payload_crc = _BODY.unpack_from(buffer, body_start)
    start = offset + HEADER_BYTES
    end = start + length
    damage = None
    if frame_type == 0:
        damage, end = Damage.BAD_TYPE, size
    elif length > payload_bytes_max:
        damage, end = Damage.TOO_LONG, size
    elif end > size:
        damage = Damage.SHORT_PAYLOAD
    if damage is not None:
        return Frame(offset, end, frame_type, damage=damage)
    payload = buffer[start:end]
    if zlib.crc32(payload) != payload_crc:
        return Frame(offset, end, frame_type, damage=Damage.PAYLOAD_CRC)
    return Frame(offset, end, frame_type, payload)
