"""One direction of a proxied connection (a Pipe) over in-memory transports: chunking,
backpressure both ways, closes and toxic deadlines, with no sockets and no wall clock."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from chaos.test_toxics import SteppedClock, settle
from phalanx.chaos.proxy_link import BUFFERED_BYTES_MAX, Pipe, ProxyStatistics, Side
from phalanx.chaos.toxics import READ_CHUNK_BYTES_MAX, Stream, StreamCut, ToxicSpec, validate_toxic
from phalanx.clock import ManualClock

WAIT_S = 5.0


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.reading = True
        self.eof_written = False
        self.closed = False
        self.aborted = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof_written = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


class Toxics:
    def __init__(self, *specs: ToxicSpec) -> None:
        self.specs = [validate_toxic(s) for s in specs]
        self.revision = 0

    def toxics(self, stream: Stream) -> list[ToxicSpec]:
        return [s for s in self.specs if s.stream == stream]


def pipe_of(
    toxics: Toxics | None = None, clock: ManualClock | None = None
) -> tuple[Pipe, FakeTransport, FakeTransport]:
    source, dest = Side("client"), Side("upstream")
    source_transport, dest_transport = FakeTransport(), FakeTransport()
    source.connection_made(source_transport)
    dest.connection_made(dest_transport)
    pipe = Pipe(
        "upstream",
        source,
        dest,
        toxics or Toxics(),
        ProxyStatistics(),
        clock=clock or ManualClock(),
        rng=random.Random(1),
    )
    return pipe, source_transport, dest_transport


async def test_reads_are_split_into_chunks_and_passed_on_in_order() -> None:
    pipe, _source, dest = pipe_of()
    data = bytes(range(256)) * (READ_CHUNK_BYTES_MAX // 100)
    pipe.feed(data)
    pipe.feed_eof()
    async with asyncio.timeout(WAIT_S):
        await pipe.run()
    assert b"".join(dest.written) == data
    assert max(len(w) for w in dest.written) == READ_CHUNK_BYTES_MAX
    assert dest.eof_written


async def test_reading_pauses_above_the_buffer_limit_and_resumes_below_half() -> None:
    pipe, source, dest = pipe_of()
    pipe.feed(b"x" * BUFFERED_BYTES_MAX)
    assert source.reading  # at the limit, not above it
    pipe.feed(b"y")
    assert not source.reading
    assert pipe.buffered_bytes == BUFFERED_BYTES_MAX + 1
    pipe.feed_eof()
    async with asyncio.timeout(WAIT_S):
        await pipe.run()
    assert source.reading
    assert sum(len(w) for w in dest.written) == BUFFERED_BYTES_MAX + 1


async def test_a_paused_destination_holds_the_pipe_until_it_drains() -> None:
    pipe, _source, dest = pipe_of()
    pipe.dest.pause_writing()
    pipe.feed(b"a")
    pipe.feed(b"b")
    task = asyncio.create_task(pipe.run())
    for _ in range(10):
        await asyncio.sleep(0)
    assert dest.written == [b"a"]  # waiting for the first write to drain
    pipe.dest.resume_writing()
    pipe.feed_eof()
    async with asyncio.timeout(WAIT_S):
        await task
    assert dest.written == [b"a", b"b"]


async def test_a_lost_destination_ends_the_pipe() -> None:
    pipe, _source, dest = pipe_of()
    task = asyncio.create_task(pipe.run())
    await asyncio.sleep(0)
    pipe.dest.connection_lost(None)
    async with asyncio.timeout(WAIT_S):
        await task
    pipe.feed(b"late")
    assert dest.written == []


async def test_an_idle_pipe_wakes_at_a_toxic_deadline() -> None:
    clock = ManualClock()
    toxics = Toxics(ToxicSpec(type="timeout", stream="upstream", attributes={"timeout": 100}))
    pipe, _source, dest = pipe_of(toxics, clock)
    with pytest.raises(StreamCut):
        async with asyncio.timeout(WAIT_S):
            await pipe.run()
    assert clock.sleeps_s == pytest.approx([0.1])
    assert dest.written == []


async def test_a_change_of_toxics_reaches_the_next_chunk_and_keeps_unchanged_state() -> None:
    clock = ManualClock()
    limit = ToxicSpec(type="limit_data", stream="upstream", attributes={"bytes": 5})
    toxics = Toxics(limit)
    pipe, _source, dest = pipe_of(toxics, clock)
    task = asyncio.create_task(pipe.run())
    pipe.feed(b"abc")
    for _ in range(10):
        await asyncio.sleep(0)
    # Another toxic added: limit_data keeps its count of 3 bytes passed.
    toxics.specs.append(validate_toxic(ToxicSpec(type="latency", stream="upstream")))
    toxics.revision += 1
    pipe.poke()
    pipe.feed(b"defg")
    with pytest.raises(StreamCut):
        async with asyncio.timeout(WAIT_S):
            await task
    assert b"".join(dest.written) == b"abcde"
    assert [type(t).__name__ for t in pipe.chain] == ["LimitDataToxic", "LatencyToxic"]


async def test_a_reset_by_the_source_is_passed_on_as_a_reset() -> None:
    pipe, _source, _dest = pipe_of()
    pipe.feed(b"last words")
    pipe.source.connection_lost(ConnectionResetError())
    with pytest.raises(StreamCut) as cut:
        async with asyncio.timeout(WAIT_S):
            await pipe.run()
    assert cut.value.reset


# -- toxic changes reach a chunk already waiting, and closes go through later toxics --------


def latency_ms(milliseconds: int) -> ToxicSpec:
    return validate_toxic(
        ToxicSpec(type="latency", stream="upstream", attributes={"latency": milliseconds})
    )


def change(toxics: Toxics, pipe: Pipe, *specs: ToxicSpec) -> None:
    """What the proxy does on a change: new toxics, a new revision, every pipe poked."""
    toxics.specs = [validate_toxic(s) for s in specs]
    toxics.revision += 1
    pipe.poke()


async def test_removing_a_toxic_passes_on_the_chunk_waiting_in_it_through_the_rest() -> None:
    clock = SteppedClock()
    slicer = ToxicSpec(type="slicer", stream="upstream", attributes={"average_size": 2})
    toxics = Toxics(latency_ms(10_000), slicer)
    pipe, _source, dest = pipe_of(toxics, clock)
    task = asyncio.create_task(pipe.run())
    pipe.feed(b"abcdef")
    await settle(lambda: clock.sleeps_s == [10.0], "waiting in the latency")
    clock.advance(0.5)
    change(toxics, pipe, slicer)
    await settle(lambda: len(dest.written) == 3, "passed on")
    assert dest.written == [b"ab", b"cd", b"ef"]  # the slicer after it still applies
    assert clock.now_s() == 0.5
    pipe.feed_eof()
    async with asyncio.timeout(WAIT_S):
        await task


async def test_an_update_re_evaluates_a_waiting_chunk_from_the_time_it_was_read() -> None:
    clock = SteppedClock()
    toxics = Toxics(latency_ms(10_000))
    pipe, _source, dest = pipe_of(toxics, clock)
    task = asyncio.create_task(pipe.run())
    pipe.feed(b"x")
    await settle(lambda: clock.sleeps_s == [10.0], "waiting in the latency")
    clock.advance(0.5)
    change(toxics, pipe, latency_ms(2_000))
    await settle(lambda: len(clock.sleeps_s) == 2, "waiting in the new latency")
    assert clock.sleeps_s == pytest.approx([10.0, 1.5])  # 2 s after it was read, at 0
    assert dest.written == []
    clock.advance(1.5)
    await settle(lambda: dest.written == [b"x"], "passed on")
    change(toxics, pipe, latency_ms(100))
    pipe.feed(b"y")
    await settle(lambda: len(clock.sleeps_s) == 3, "waiting again")
    change(toxics, pipe, latency_ms(0))  # already due: passed on with no further wait
    await settle(lambda: dest.written == [b"x", b"y"], "passed on")
    assert len(clock.sleeps_s) == 3
    pipe.feed_eof()
    async with asyncio.timeout(WAIT_S):
        await task


async def test_a_limit_data_close_goes_through_a_slow_close_after_it() -> None:
    clock = SteppedClock()
    limit = ToxicSpec(type="limit_data", stream="upstream", attributes={"bytes": 10})
    slow = ToxicSpec(type="slow_close", stream="upstream", attributes={"delay": 2000})
    pipe, _source, dest = pipe_of(Toxics(limit, slow), clock)
    task = asyncio.create_task(pipe.run())
    pipe.feed(b"0123456789abcdefghij")
    await settle(lambda: clock.sleeps_s == [2.0], "the close waiting in the slow_close")
    assert b"".join(dest.written) == b"0123456789"
    assert not task.done()
    clock.advance(2.0)
    with pytest.raises(StreamCut) as cut:
        async with asyncio.timeout(WAIT_S):
            await task
    assert not cut.value.reset


async def test_a_reset_does_not_wait_for_a_slow_close() -> None:
    clock = SteppedClock()
    reset = ToxicSpec(type="reset_peer", stream="upstream")
    slow = ToxicSpec(type="slow_close", stream="upstream", attributes={"delay": 2000})
    pipe, _source, _dest = pipe_of(Toxics(reset, slow), clock)
    pipe.feed(b"x")
    with pytest.raises(StreamCut) as cut:
        async with asyncio.timeout(WAIT_S):
            await pipe.run()
    assert cut.value.reset
    assert clock.sleeps_s == []


async def test_a_timeout_close_goes_through_a_slow_close_after_it() -> None:
    clock = ManualClock()
    timeout = ToxicSpec(type="timeout", stream="upstream", attributes={"timeout": 100})
    slow = ToxicSpec(type="slow_close", stream="upstream", attributes={"delay": 2000})
    pipe, _source, dest = pipe_of(Toxics(timeout, slow), clock)
    pipe.feed(b"swallowed")
    with pytest.raises(StreamCut) as cut:
        async with asyncio.timeout(WAIT_S):
            await pipe.run()
    assert not cut.value.reset
    assert clock.sleeps_s == pytest.approx([0.1, 2.0])
    assert dest.written == []
