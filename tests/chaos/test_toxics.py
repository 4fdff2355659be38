"""The toxics on their own: validation, and what each asks of the clock and does to bytes.

Every timing check reads the waits recorded by a ManualClock; nothing is timed.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import pytest

from phalanx.chaos.toxics import (
    READ_CHUNK_BYTES_MAX,
    TOXIC_TIME_MS_MAX,
    Chunk,
    StreamCut,
    Toxic,
    ToxicSpec,
    ToxicUpdate,
    make_toxic,
    update_toxic,
    validate_toxic,
)
from phalanx.clock import ManualClock
from phalanx.errors import BadRequest


def toxic(kind: str, clock: ManualClock, seed: int = 1, **attributes: int) -> Toxic:
    spec = validate_toxic(ToxicSpec(type=kind, attributes=attributes))
    made = make_toxic(spec, clock, random.Random(seed))
    assert made is not None
    return made


class Sink:
    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.chunks: list[Chunk] = []
        self.at_s: list[float] = []

    async def __call__(self, chunk: Chunk) -> None:
        self.chunks.append(chunk)
        self.at_s.append(self.clock.now_s())

    @property
    def data(self) -> bytes:
        return b"".join(c.data for c in self.chunks)


class SteppedClock(ManualClock):
    """A ManualClock whose waits last: ``asleep`` records the wait, then returns only once
    :meth:`advance` has moved time to its end (or the sleeper is cancelled)."""

    def __init__(self) -> None:
        super().__init__()
        self._sleepers: list[asyncio.Future[None]] = []

    async def asleep(self, seconds: float) -> None:
        self.sleeps_s.append(seconds)
        due_s = self.now_s() + max(seconds, 0.0)
        while self.now_s() < due_s:
            woken = asyncio.get_running_loop().create_future()
            self._sleepers.append(woken)
            await woken

    def advance(self, seconds: float) -> float:
        now_s = super().advance(seconds)
        sleepers, self._sleepers = self._sleepers, []
        for woken in sleepers:
            if not woken.done():
                woken.set_result(None)
        return now_s


async def settle(condition: Callable[[], bool], what: str) -> None:
    """Let the other tasks run until ``condition()`` holds (a bounded number of steps)."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"never happened: {what}")


# -- validation -----------------------------------------------------------------------------


def test_defaults_are_filled_in() -> None:
    spec = validate_toxic(ToxicSpec(type="latency", attributes={"latency": 5}))
    assert spec.name == "latency_downstream"
    assert spec.stream == "downstream"
    assert spec.toxicity == 1.0
    assert spec.attributes == {"latency": 5, "jitter": 0}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (ToxicSpec(type="lag"), "type: unknown toxic 'lag'"),
        (ToxicSpec(type="latency", stream="sideways"), "stream: 'upstream' or 'downstream'"),
        (
            ToxicSpec(type="latency", attributes={"delay": 1}),
            "attributes: latency has no attribute 'delay'",
        ),
        (ToxicSpec(type="latency", attributes={"latency": -1}), "attributes.latency: must be >= 0"),
        (
            ToxicSpec(type="timeout", attributes={"timeout": TOXIC_TIME_MS_MAX + 1}),
            f"attributes.timeout: at most {TOXIC_TIME_MS_MAX}",
        ),
        (
            ToxicSpec(type="bandwidth", attributes={"rate": True}),
            "attributes.rate: an integer is required",
        ),
        (ToxicSpec(type="latency", toxicity=1.5), "toxicity: a probability in"),
        (ToxicSpec(type="latency", toxicity=float("nan")), "toxicity: a probability in"),
        (ToxicSpec(type="latency", name="a/b"), "name: only letters"),
        (ToxicSpec(type="latency", name="x" * 129), "name: at most 128"),
    ],
)
def test_invalid_specs_name_the_field(spec: ToxicSpec, message: str) -> None:
    with pytest.raises(BadRequest) as error:
        validate_toxic(spec)
    assert str(error.value).startswith(message)


def test_an_update_merges_attributes_and_keeps_type_and_stream() -> None:
    spec = validate_toxic(ToxicSpec(type="latency", attributes={"latency": 5, "jitter": 2}))
    updated = update_toxic(spec, ToxicUpdate(attributes={"latency": 9}, toxicity=0.5))
    assert updated.attributes == {"latency": 9, "jitter": 2}
    assert updated.toxicity == 0.5
    with pytest.raises(BadRequest, match=r"^type: cannot be changed"):
        update_toxic(spec, ToxicUpdate(type="bandwidth"))
    with pytest.raises(BadRequest, match=r"attributes\.latency: must be >= 0"):
        update_toxic(spec, ToxicUpdate(attributes={"latency": -5}))


def test_toxicity_zero_never_applies_and_one_always_does() -> None:
    rng = random.Random(7)
    clock = ManualClock()
    never = validate_toxic(ToxicSpec(type="latency", toxicity=0.0))
    always = validate_toxic(ToxicSpec(type="latency", toxicity=1.0))
    assert all(make_toxic(never, clock, rng) is None for _ in range(1000))
    assert all(make_toxic(always, clock, rng) is not None for _ in range(1000))


def test_toxicity_is_drawn_from_the_seeded_rng() -> None:
    spec = validate_toxic(ToxicSpec(type="latency", toxicity=0.3))
    clock = ManualClock()

    def draws(seed: int) -> list[bool]:
        rng = random.Random(seed)
        return [make_toxic(spec, clock, rng) is not None for _ in range(2000)]

    first = draws(3)
    assert first == draws(3)
    assert 400 < sum(first) < 800  # about 30 %


# -- behaviour ------------------------------------------------------------------------------


async def test_latency_waits_from_the_time_a_chunk_was_read() -> None:
    clock = ManualClock()
    latency = toxic("latency", clock, latency=100)
    sink = Sink(clock)
    await latency.on_data(Chunk(b"a", 0.0), sink)
    # Read at the same time as the first: it is due at the same time, so no second wait.
    await latency.on_data(Chunk(b"b", 0.0), sink)
    assert clock.sleeps_s == pytest.approx([0.1])
    assert sink.data == b"ab"
    assert [c.ready_s for c in sink.chunks] == pytest.approx([0.1, 0.1])


async def test_latency_jitter_is_uniform_within_bounds_and_seeded() -> None:
    # Each chunk waits latency + uniform(-jitter, +jitter) ms after it was read.
    clock = ManualClock()
    latency = toxic("latency", clock, 5, latency=100, jitter=20)
    sink = Sink(clock)
    twin = random.Random(5)
    twin.random()  # the toxicity draw
    for n in range(200):
        read_s = clock.now_s()
        await latency.on_data(Chunk(bytes([n % 256]), read_s), sink)
        expected_ms = 100 + twin.uniform(-20, 20)
        assert clock.now_s() - read_s == pytest.approx(expected_ms / 1000)
        assert 0.08 <= clock.now_s() - read_s <= 0.12
    assert sink.data == bytes(n % 256 for n in range(200))  # order kept


async def test_bandwidth_asks_for_len_over_rate_in_slices_of_100_ms() -> None:
    clock = ManualClock()
    bandwidth = toxic("bandwidth", clock, rate=10)  # 10 KB/s = 10,000 bytes/s
    sink = Sink(clock)
    await bandwidth.on_data(Chunk(b"x" * 2500, 0.0), sink)
    assert [len(c.data) for c in sink.chunks] == [1000, 1000, 500]
    assert clock.sleeps_s == pytest.approx([0.1, 0.1, 0.05])
    await bandwidth.on_data(Chunk(b"y" * 30_000, 0.0), sink)
    assert sum(clock.sleeps_s) == pytest.approx(3.25)  # 32,500 bytes at 10,000 bytes/s
    assert sink.data == b"x" * 2500 + b"y" * 30_000


async def test_bandwidth_takes_oversleep_off_the_next_wait() -> None:
    class LateClock(ManualClock):
        async def asleep(self, seconds: float) -> None:
            await super().asleep(seconds)
            self.advance(0.03)  # every sleep runs 30 ms long

    clock = LateClock()
    bandwidth = toxic("bandwidth", clock, rate=10)
    await bandwidth.on_data(Chunk(b"x" * 3000, 0.0), Sink(clock))
    assert clock.sleeps_s == pytest.approx([0.1, 0.07, 0.07])
    assert clock.now_s() == pytest.approx(0.3 + 0.03)


async def test_bandwidth_zero_is_unlimited() -> None:
    clock = ManualClock()
    bandwidth = toxic("bandwidth", clock, rate=0)
    sink = Sink(clock)
    await bandwidth.on_data(Chunk(b"x" * READ_CHUNK_BYTES_MAX, 0.0), sink)
    assert clock.sleeps_s == []
    assert len(sink.chunks) == 1


async def test_slicer_splits_with_a_delay_between_pieces() -> None:
    clock = ManualClock()
    slicer = toxic("slicer", clock, average_size=10, size_variation=3, delay=500)
    sink = Sink(clock)
    data = bytes(range(256)) * 4
    await slicer.on_data(Chunk(data, 0.0), sink)
    sizes = [len(c.data) for c in sink.chunks]
    assert sink.data == data
    assert all(7 <= size <= 13 for size in sizes[:-1])
    assert len(set(sizes)) > 1
    assert clock.sleeps_s == pytest.approx([0.0005] * (len(sizes) - 1))


async def test_limit_data_passes_exactly_n_bytes_then_cuts() -> None:
    clock = ManualClock()
    limit = toxic("limit_data", clock, bytes=10)
    sink = Sink(clock)
    await limit.on_data(Chunk(b"1234", 0.0), sink)
    with pytest.raises(StreamCut) as cut:
        await limit.on_data(Chunk(b"56789abcdef", 0.0), sink)
    assert sink.data == b"123456789a"
    assert not cut.value.reset


async def test_timeout_swallows_and_is_due_timeout_ms_after_it_began() -> None:
    clock = ManualClock(start_s=50.0)
    timeout = toxic("timeout", clock, timeout=250)
    sink = Sink(clock)
    await timeout.on_data(Chunk(b"lost", 50.0), sink)
    assert sink.chunks == []
    assert timeout.deadline_s() == pytest.approx(50.25)
    with pytest.raises(StreamCut) as cut:
        timeout.expire()
    assert not cut.value.reset


async def test_timeout_zero_never_closes() -> None:
    clock = ManualClock()
    timeout = toxic("timeout", clock, timeout=0)
    await timeout.on_data(Chunk(b"lost", 0.0), Sink(clock))
    assert timeout.deadline_s() is None


async def test_reset_peer_zero_resets_at_the_first_chunk() -> None:
    clock = ManualClock()
    reset = toxic("reset_peer", clock, timeout=0)
    assert reset.deadline_s() is None  # nothing happens before data
    with pytest.raises(StreamCut) as cut:
        await reset.on_data(Chunk(b"x", 0.0), Sink(clock))
    assert cut.value.reset


async def test_reset_peer_with_a_timeout_starts_its_clock_at_the_first_chunk() -> None:
    clock = ManualClock()
    reset = toxic("reset_peer", clock, timeout=300)
    clock.advance(10.0)
    sink = Sink(clock)
    await reset.on_data(Chunk(b"x", 10.0), sink)
    await reset.on_data(Chunk(b"y", 10.1), sink)
    assert sink.chunks == []
    assert reset.deadline_s() == pytest.approx(10.3)
    with pytest.raises(StreamCut) as cut:
        reset.expire()
    assert cut.value.reset


async def test_slow_close_waits_before_the_close() -> None:
    clock = ManualClock()
    slow = toxic("slow_close", clock, delay=1500)
    sink = Sink(clock)
    await slow.on_data(Chunk(b"data", 0.0), sink)
    assert clock.sleeps_s == []  # data is not delayed
    await slow.on_close(clock.now_s())
    assert clock.sleeps_s == pytest.approx([1.5])


# -- retired toxics (removed, or replaced by an update) -------------------------------------


async def test_a_retired_latency_passes_the_waiting_chunk_on_at_once_unchanged() -> None:
    clock = SteppedClock()
    latency = toxic("latency", clock, latency=10_000)
    sink = Sink(clock)
    held = asyncio.create_task(latency.on_data(Chunk(b"late", 0.0), sink))
    await settle(lambda: clock.sleeps_s == [10.0], "waiting in the latency")
    clock.advance(0.5)
    latency.retire(())
    await settle(held.done, "passed on")
    await held
    assert sink.data == b"late"
    assert sink.at_s == [0.5]
    # Unchanged: a replacement counts its own latency from the time the chunk was read.
    assert sink.chunks[0].ready_s == 0.0
    await latency.on_data(Chunk(b"next", 0.5), sink)  # retired: no more waits
    assert clock.sleeps_s == [10.0]


async def test_a_retired_bandwidth_passes_the_rest_of_the_chunk_at_once() -> None:
    clock = SteppedClock()
    bandwidth = toxic("bandwidth", clock, rate=4)  # 4,000 bytes/s, 16.4 s for 64 KiB
    sink = Sink(clock)
    data = bytes(range(256)) * 256
    held = asyncio.create_task(bandwidth.on_data(Chunk(data, 0.0), sink))
    await settle(lambda: len(clock.sleeps_s) == 1, "waiting in the bandwidth")
    clock.advance(0.5)
    await settle(lambda: len(clock.sleeps_s) == 2, "waiting for its second slice")
    bandwidth.retire(())
    await settle(held.done, "passed on")
    await held
    assert sink.data == data
    assert sink.at_s[-1] == 0.5
    assert len(sink.chunks[-1].data) > len(data) // 2  # the rest, as one piece


async def test_a_retired_slicer_passes_the_rest_of_the_chunk_at_once() -> None:
    clock = SteppedClock()
    slicer = toxic("slicer", clock, average_size=4, delay=10_000_000)  # 10 s between pieces
    sink = Sink(clock)
    held = asyncio.create_task(slicer.on_data(Chunk(b"0123456789", 0.0), sink))
    await settle(lambda: clock.sleeps_s == [10.0], "waiting between two pieces")
    slicer.retire(())
    await settle(held.done, "passed on")
    await held
    assert [c.data for c in sink.chunks] == [b"0123", b"456789"]
    assert clock.now_s() == 0.0


async def test_a_retired_slow_close_lets_the_close_pass_at_once() -> None:
    clock = SteppedClock()
    slow = toxic("slow_close", clock, delay=2000)
    closing = asyncio.create_task(slow.on_close(0.0))
    await settle(lambda: clock.sleeps_s == [2.0], "waiting in the slow_close")
    assert not closing.done()
    slow.retire(())
    await settle(closing.done, "the close passed on")
    await closing
    assert clock.now_s() == 0.0


async def test_a_cancelled_wait_leaves_no_sleep_behind() -> None:
    clock = SteppedClock()
    latency = toxic("latency", clock, latency=10_000)
    held = asyncio.create_task(latency.on_data(Chunk(b"x", 0.0), Sink(clock)))
    await settle(lambda: clock.sleeps_s == [10.0], "waiting in the latency")
    held.cancel()
    with pytest.raises(asyncio.CancelledError):
        await held
    assert asyncio.all_tasks() == {asyncio.current_task()}  # the clock's sleep ended too
