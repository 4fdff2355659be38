"""The frame codec: round trips, arbitrary splits, garbage, limits, chunk reassembly."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from phalanx.errors import BadRequest, TooLarge
from phalanx.net.framing import (
    FRAME_BYTES_MIN,
    HEADER_BYTES,
    WIRE_VERSION,
    Chunk,
    ChunkAssembler,
    Frame,
    FrameDecoder,
    FrameError,
    FrameTooLarge,
    FrameType,
    Hello,
    MalformedFrame,
    chunk_data_bytes,
    decode_payload,
    encode_chunk,
    encode_frame,
    encode_message,
    encode_raw_frame,
    split_chunks,
)
from phalanx.raft.types import (
    ConfState,
    Entry,
    EntryType,
    Message,
    MessageType,
    Snapshot,
    SnapshotMeta,
)

FRAME_MAX = 4096

entries = st.builds(
    Entry,
    term=st.integers(0, 2**40),
    index=st.integers(0, 2**40),
    type=st.sampled_from(EntryType),
    data=st.binary(max_size=64),
)
messages = st.builds(
    Message,
    type=st.sampled_from(MessageType),
    src=st.integers(1, 1000),
    dst=st.integers(1, 1000),
    term=st.integers(0, 2**40),
    log_term=st.integers(0, 2**40),
    index=st.integers(0, 2**40),
    entries=st.lists(entries, max_size=5).map(tuple),
    commit=st.integers(0, 2**40),
    reject=st.booleans(),
    context=st.binary(max_size=32),
    snapshot=st.none()
    | st.builds(
        Snapshot,
        meta=st.builds(
            SnapshotMeta,
            index=st.integers(0, 100),
            term=st.integers(0, 100),
            conf_state=st.builds(ConfState, voters=st.just((1, 2, 3))),
        ),
        data=st.binary(max_size=128),
    ),
)


def _splits(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, start = [], 0
    for point in [*points, len(data)]:
        pieces.append(data[start:point])
        start = point
    return pieces


def _decode_all(data_pieces: list[bytes], frame_bytes_max: int = FRAME_MAX) -> list[Frame]:
    decoder = FrameDecoder(frame_bytes_max)
    frames: list[Frame] = []
    for piece in data_pieces:
        frames.extend(decoder.feed(piece))
    assert decoder.buffered_bytes == 0
    return frames


@given(st.lists(messages, min_size=1, max_size=8), st.lists(st.integers(0, 10**6), max_size=12))
def test_any_split_of_a_valid_stream_decodes_identically(
    batch: list[Message], cuts: list[int]
) -> None:
    stream = b"".join(encode_frame(FrameType.MESSAGE, m, 1 << 20) for m in batch)
    frames = _decode_all(_splits(stream, cuts), 1 << 20)
    assert [f.type for f in frames] == [FrameType.MESSAGE] * len(batch)
    assert [decode_payload(f.payload, Message) for f in frames] == batch


@given(st.lists(st.binary(max_size=200), max_size=10))
def test_byte_at_a_time_equals_all_at_once(payloads: list[bytes]) -> None:
    stream = b"".join(encode_raw_frame(FrameType.CHUNK, p, FRAME_MAX) for p in payloads)
    one_by_one = _decode_all([stream[i : i + 1] for i in range(len(stream))])
    assert one_by_one == _decode_all([stream])
    assert [f.payload for f in one_by_one] == payloads


@given(st.binary(max_size=2000), st.lists(st.integers(0, 4000), max_size=8))
def test_garbage_either_decodes_or_raises_the_typed_error(garbage: bytes, cuts: list[int]) -> None:
    decoder = FrameDecoder(FRAME_BYTES_MIN)
    try:
        for piece in _splits(garbage, cuts):
            for frame in decoder.feed(piece):
                assert len(frame.payload) <= FRAME_BYTES_MIN - HEADER_BYTES
            assert decoder.buffered_bytes < FRAME_BYTES_MIN
    except FrameError:
        with pytest.raises(FrameError):  # and stays failed
            decoder.feed(b"")


@given(st.binary(max_size=300), st.sampled_from([Message, Hello, Chunk]))
def test_garbage_payloads_raise_malformed_frame(payload: bytes, kind: type[object]) -> None:
    try:
        value = decode_payload(payload, kind)
    except MalformedFrame:
        return
    assert isinstance(value, kind)


@given(st.binary(min_size=1, max_size=5000), st.integers(1, 700))
def test_chunks_reassemble_whatever_the_chunk_size(data: bytes, chunk_bytes: int) -> None:
    assembler = ChunkAssembler(len(data))
    chunks = split_chunks(7, data, chunk_bytes)
    results = [assembler.add(c) for c in chunks]
    assert results[:-1] == [None] * (len(chunks) - 1)
    assert results[-1] == data
    assert assembler.buffered_bytes == 0


def test_oversized_frame_is_refused_from_its_header_alone() -> None:
    decoder = FrameDecoder(FRAME_BYTES_MIN)
    header = struct.pack(">BBI", WIRE_VERSION, FrameType.MESSAGE, FRAME_BYTES_MIN)
    with pytest.raises(FrameTooLarge) as caught:
        decoder.feed(header)  # no payload yet: nothing is buffered waiting for it
    assert isinstance(caught.value, TooLarge)
    # The largest allowed frame passes.
    ok = FrameDecoder(FRAME_BYTES_MIN)
    payload = b"x" * (FRAME_BYTES_MIN - HEADER_BYTES)
    assert ok.feed(encode_raw_frame(FrameType.CHUNK, payload, FRAME_BYTES_MIN)) == [
        Frame(FrameType.CHUNK, payload)
    ]


def test_encoder_refuses_frames_over_the_limit() -> None:
    big = Message(type=MessageType.APPEND, src=1, dst=2, term=1, context=b"x" * FRAME_BYTES_MIN)
    with pytest.raises(FrameTooLarge):
        encode_frame(FrameType.MESSAGE, big, FRAME_BYTES_MIN)
    with pytest.raises(FrameTooLarge):
        encode_raw_frame(FrameType.MESSAGE, encode_message(big), FRAME_BYTES_MIN)


@pytest.mark.parametrize(
    ("header", "error"),
    [
        (struct.pack(">BBI", 0x47, 0x45, 0x54), "version"),  # "GET ..." from an HTTP client
        (struct.pack(">BBI", WIRE_VERSION, 99, 0), "unknown frame type"),
        (struct.pack(">BBI", WIRE_VERSION, 0, 0), "unknown frame type"),
    ],
)
def test_bad_headers_are_malformed(header: bytes, error: str) -> None:
    with pytest.raises(MalformedFrame, match=error) as caught:
        FrameDecoder().feed(header)
    assert isinstance(caught.value, BadRequest)


def test_chunk_stream_violations() -> None:
    with pytest.raises(FrameTooLarge):
        ChunkAssembler(10).add(Chunk(1, 0, 11, b"x"))
    with pytest.raises(MalformedFrame, match="starts at offset"):
        ChunkAssembler(10).add(Chunk(1, 3, 10, b"x"))
    assembler = ChunkAssembler(10)
    assert assembler.add(Chunk(1, 0, 10, b"abc")) is None
    for bad, match in [
        (Chunk(2, 3, 10, b"d"), "interleaved"),
        (Chunk(1, 3, 9, b"d"), "total size"),
        (Chunk(1, 4, 10, b"d"), "expected 3"),
        (Chunk(1, 3, 10, b"x" * 8), "overruns"),
        (Chunk(1, 3, 10, b""), "empty chunk"),
    ]:
        with pytest.raises(MalformedFrame, match=match):
            assembler.add(bad)
    assert assembler.add(Chunk(1, 3, 10, b"defghij")) == b"abcdefghij"


def test_chunk_frames_fit_the_frame_limit() -> None:
    data = bytes(range(256)) * 40
    frames = [
        encode_chunk(c, FRAME_BYTES_MIN)
        for c in split_chunks(2**63 - 1, data, chunk_data_bytes(FRAME_BYTES_MIN))
    ]
    assert all(len(f) <= FRAME_BYTES_MIN for f in frames)
    assembler = ChunkAssembler(len(data))
    out = [
        assembler.add(decode_payload(f.payload, Chunk))
        for f in _decode_all(frames, FRAME_BYTES_MIN)
    ]
    assert out[-1] == data


@pytest.mark.parametrize("bad", [0, FRAME_BYTES_MIN - 1, 2**31 + 1])
def test_frame_bytes_max_is_validated(bad: int) -> None:
    with pytest.raises(ValueError, match="frame_bytes_max"):
        FrameDecoder(bad)
