"""Toxics of the TCP fault proxy: their specs, their validation, and what each does to bytes.

A :class:`ToxicSpec` is what a user asks for (Toxiproxy's vocabulary and JSON shape):
``name``, ``type``, ``stream`` (``upstream`` = client to server bytes, ``downstream`` =
server to client bytes), ``toxicity`` and ``attributes``. :func:`validate_toxic` checks one
and fills in its defaults; every failure is a :class:`~phalanx.errors.BadRequest` naming
the field.

A :class:`Toxic` is one spec acting on one direction of one connection. The proxy passes
each chunk it read through the toxics of that direction, in the order they were added: a
toxic gets the chunk and an ``emit`` callable that hands bytes to the next one, so it may
delay the chunk (``latency``, ``bandwidth``), split it (``slicer``), swallow it
(``timeout``, ``reset_peer``) or cut the connection by raising :class:`StreamCut`
(``limit_data``, and ``timeout`` / ``reset_peer`` once their :meth:`Toxic.deadline_s`
passes). Toxics wait only through the injected :class:`~phalanx.clock.Clock` and draw only
from the injected :class:`random.Random`, so tests check the waits they ask for on a
:class:`~phalanx.clock.ManualClock` with no wall-clock timing.

A toxic removed from a connection, or replaced by an update, is retired
(:meth:`Toxic.retire`): a wait it is in ends at once and it passes on what it holds, whole
and without its effect (``emit`` then leads to whatever now follows its place), so leaving
never holds data back nor drops it.

=============  =================================  ==============================================
type           attributes                          effect
=============  =================================  ==============================================
latency        ``latency`` ms, ``jitter`` ms       each chunk waits latency +- uniform jitter
bandwidth      ``rate`` KB/s (0: unlimited)        at most ``rate`` * 1000 bytes per second
slow_close     ``delay`` ms                        the close waits ``delay`` before passing on
timeout        ``timeout`` ms (0: never close)     swallows data; closes after ``timeout``
reset_peer     ``timeout`` ms (0: at once)         on first data, resets after ``timeout``
slicer         ``average_size``,                   splits chunks into pieces of average_size +-
               ``size_variation`` bytes,           size_variation bytes, ``delay`` between
               ``delay`` µs                        pieces
limit_data     ``bytes``                           closes once ``bytes`` have passed
=============  =================================  ==============================================
"""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final, Literal

import msgspec

from phalanx.clock import Clock
from phalanx.errors import BadRequest

__all__ = [
    "BANDWIDTH_RATE_KBPS_MAX",
    "LIMIT_DATA_BYTES_MAX",
    "NAME_CHARS_MAX",
    "READ_CHUNK_BYTES_MAX",
    "SLICER_DELAY_US_MAX",
    "STREAMS",
    "TOXIC_ATTRIBUTES",
    "TOXIC_TIME_MS_MAX",
    "TOXIC_TYPES",
    "Chunk",
    "Emit",
    "StreamCut",
    "Toxic",
    "ToxicSpec",
    "ToxicUpdate",
    "check_name",
    "make_toxic",
    "update_toxic",
    "validate_toxic",
]

#: The most bytes the proxy reads and passes through the toxics as one chunk.
READ_CHUNK_BYTES_MAX: Final = 64 * 1024
#: The longest wait a toxic may ask for in milliseconds: latency, jitter, timeouts, delays.
TOXIC_TIME_MS_MAX: Final = 3_600_000
#: The longest pause between two slices of the ``slicer`` toxic, in microseconds.
SLICER_DELAY_US_MAX: Final = 10_000_000
#: The highest ``bandwidth`` rate in KB/s (10 GB/s: more is no limit at all on loopback).
BANDWIDTH_RATE_KBPS_MAX: Final = 10_000_000
#: The largest ``limit_data`` byte count (exactly representable as a JSON number).
LIMIT_DATA_BYTES_MAX: Final = 2**53
#: The longest proxy or toxic name; names use letters, digits and ``_ . : -``.
NAME_CHARS_MAX: Final = 128

Stream = Literal["upstream", "downstream"]
STREAMS: Final = ("upstream", "downstream")

#: Each toxic type's attributes and the largest value each may take (all are integers >= 0).
TOXIC_ATTRIBUTES: Final[dict[str, dict[str, int]]] = {
    "latency": {"latency": TOXIC_TIME_MS_MAX, "jitter": TOXIC_TIME_MS_MAX},
    "bandwidth": {"rate": BANDWIDTH_RATE_KBPS_MAX},
    "slow_close": {"delay": TOXIC_TIME_MS_MAX},
    "timeout": {"timeout": TOXIC_TIME_MS_MAX},
    "reset_peer": {"timeout": TOXIC_TIME_MS_MAX},
    "slicer": {
        "average_size": READ_CHUNK_BYTES_MAX,
        "size_variation": READ_CHUNK_BYTES_MAX,
        "delay": SLICER_DELAY_US_MAX,
    },
    "limit_data": {"bytes": LIMIT_DATA_BYTES_MAX},
}
TOXIC_TYPES: Final = tuple(TOXIC_ATTRIBUTES)

_NAME = re.compile(r"[A-Za-z0-9_.:-]+")
#: ``bandwidth`` passes at most this much time's worth of bytes at once, then waits.
_BANDWIDTH_SLICE_S: Final = 0.1
_MS: Final = 1e-3
_US: Final = 1e-6


def check_name(field: str, name: object) -> str:
    """``name`` if it is a valid proxy or toxic name, else :class:`BadRequest`."""
    if not isinstance(name, str) or not name:
        raise BadRequest(f"{field}: a non-empty string is required")
    if len(name) > NAME_CHARS_MAX:
        raise BadRequest(f"{field}: at most {NAME_CHARS_MAX} characters, got {len(name)}")
    if not _NAME.fullmatch(name):
        raise BadRequest(f"{field}: only letters, digits and _ . : - are allowed, got {name!r}")
    return name


class ToxicSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One toxic, as created, listed and stored (Toxiproxy's JSON shape).

    ``name`` defaults to ``<type>_<stream>``; missing attributes default to 0, as in
    Toxiproxy. Use :func:`validate_toxic` to get the checked, completed form.
    """

    type: str
    name: str = ""
    stream: str = "downstream"
    toxicity: float = 1.0
    attributes: dict[str, int] = msgspec.field(default_factory=dict)


class ToxicUpdate(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The body of a toxic update: new attributes (merged over the old ones), new toxicity.

    ``name``, ``type`` and ``stream`` may be sent (Toxiproxy's clients send the whole toxic)
    but must match the toxic's: they cannot be changed.
    """

    attributes: dict[str, int] | None = None
    toxicity: float | None = None
    name: str | None = None
    type: str | None = None
    stream: str | None = None


def _check_toxicity(toxicity: object) -> float:
    if isinstance(toxicity, bool) or not isinstance(toxicity, int | float):
        raise BadRequest(f"toxicity: a number in [0, 1] is required, got {toxicity!r}")
    if not 0.0 <= toxicity <= 1.0:  # also refuses NaN
        raise BadRequest(f"toxicity: a probability in [0, 1] is required, got {toxicity!r}")
    return float(toxicity)


def _check_attributes(kind: str, attributes: dict[str, int]) -> dict[str, int]:
    allowed = TOXIC_ATTRIBUTES[kind]
    for key, value in attributes.items():
        if key not in allowed:
            names = ", ".join(allowed)
            raise BadRequest(f"attributes: {kind} has no attribute {key!r} (it has: {names})")
        if isinstance(value, bool) or not isinstance(value, int):
            raise BadRequest(f"attributes.{key}: an integer is required, got {value!r}")
        if value < 0:
            raise BadRequest(f"attributes.{key}: must be >= 0, got {value}")
        if value > allowed[key]:
            raise BadRequest(f"attributes.{key}: at most {allowed[key]}, got {value}")
    return {key: attributes.get(key, 0) for key in allowed}


def validate_toxic(spec: ToxicSpec) -> ToxicSpec:
    """``spec`` checked, with its default name and every attribute filled in.

    Raises :class:`BadRequest` for an unknown type, stream or attribute, a negative or too
    large value, a toxicity outside [0, 1] or a bad name.
    """
    if spec.type not in TOXIC_ATTRIBUTES:
        raise BadRequest(f"type: unknown toxic {spec.type!r}; one of {', '.join(TOXIC_TYPES)}")
    if spec.stream not in STREAMS:
        raise BadRequest(f"stream: 'upstream' or 'downstream', got {spec.stream!r}")
    name = check_name("name", spec.name or f"{spec.type}_{spec.stream}")
    return ToxicSpec(
        name=name,
        type=spec.type,
        stream=spec.stream,
        toxicity=_check_toxicity(spec.toxicity),
        attributes=_check_attributes(spec.type, spec.attributes),
    )


def update_toxic(spec: ToxicSpec, update: ToxicUpdate) -> ToxicSpec:
    """``spec`` with ``update`` applied and validated (attributes are merged)."""
    for field in ("name", "type", "stream"):
        given = getattr(update, field)
        if given is not None and given != getattr(spec, field):
            raise BadRequest(f"{field}: cannot be changed by an update (remove and add instead)")
    attributes = dict(spec.attributes)
    if update.attributes is not None:
        attributes.update(update.attributes)
    toxicity = spec.toxicity if update.toxicity is None else update.toxicity
    return validate_toxic(msgspec.structs.replace(spec, attributes=attributes, toxicity=toxicity))


# -- behaviour ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Chunk:
    """Bytes on their way through the toxics, and the earliest time they may be passed on.

    ``ready_s`` starts as the time the proxy read them; ``latency`` moves it later. Waiting
    for a time rather than for a duration keeps a stream of chunks flowing at full speed
    behind a latency toxic instead of adding the latency once per chunk.
    """

    data: bytes
    ready_s: float


Emit = Callable[[Chunk], Awaitable[None]]


class StreamCut(Exception):
    """A toxic ends the connection: closed (FIN) or, with ``reset``, reset (RST).

    ``toxic`` is the toxic that cut (``None``: the connection itself, e.g. a peer's reset):
    a close, unlike a reset, still passes through the toxics after it (``slow_close``).
    """

    def __init__(self, reason: str, *, reset: bool = False, toxic: Toxic | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.reset = reset
        self.toxic = toxic


class Toxic:
    """One toxic acting on one direction of one connection; the base passes everything on.

    ``on_data`` handles one chunk (call ``emit`` for what passes on); ``on_close`` runs
    when the source closed, before the close is passed on (``since_s``: when the close
    reached this place in the chain); ``deadline_s`` is when the toxic wants :meth:`expire`
    called even if no data comes (``None``: never).

    Toxics wait only through :meth:`wait_s`, which :meth:`retire` ends early: a retired
    toxic passes what it holds on at once. ``names_before`` are the names of the toxics that
    preceded it when it was retired; the pipe uses them to find where its data goes next.
    """

    def __init__(self, spec: ToxicSpec, clock: Clock, rng: random.Random) -> None:
        self.spec = spec
        self.clock = clock
        self.rng = rng
        self.attributes = spec.attributes
        self.retired = False
        self.names_before: tuple[str, ...] = ()
        self._retired_future: asyncio.Future[None] | None = None

    async def on_data(self, chunk: Chunk, emit: Emit) -> None:
        await emit(chunk)

    async def on_close(self, since_s: float) -> None:  # noqa: ARG002 - for those that wait
        return

    def retire(self, names_before: tuple[str, ...]) -> None:
        """The toxic left the connection's chain: end its wait, if any, and any to come."""
        self.retired = True
        self.names_before = names_before
        if self._retired_future is not None and not self._retired_future.done():
            self._retired_future.set_result(None)

    async def wait_s(self, seconds: float) -> bool:
        """Sleep ``seconds`` on the clock unless retired first; whether the toxic still acts.

        Cancellation-safe: the clock's sleep never outlives the call.
        """
        if self.retired:
            return False
        if seconds <= 0:
            return True
        if self._retired_future is None:
            self._retired_future = asyncio.get_running_loop().create_future()
        slept = asyncio.ensure_future(self.clock.asleep(seconds))
        try:
            await asyncio.wait((slept, self._retired_future), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not slept.done():
                slept.cancel()
                await asyncio.gather(slept, return_exceptions=True)
        return not self.retired

    def deadline_s(self) -> float | None:
        return None

    def expire(self) -> None:
        """Called once :meth:`deadline_s` has passed; raises :class:`StreamCut` to cut."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec.name!r}, {self.attributes})"


class LatencyToxic(Toxic):
    """Each chunk waits until ``latency`` +- ``jitter`` ms after it was read.

    Retired during the wait, it passes the chunk on unchanged, so a replacement (an update)
    counts its own latency from the same read time.
    """

    async def on_data(self, chunk: Chunk, emit: Emit) -> None:
        latency_ms = float(self.attributes["latency"])
        jitter_ms = self.attributes["jitter"]
        if jitter_ms:
            latency_ms += self.rng.uniform(-jitter_ms, jitter_ms)
        ready_s = chunk.ready_s + max(latency_ms, 0.0) * _MS
        if not await self.wait_s(ready_s - self.clock.now_s()):
            await emit(chunk)
            return
        await emit(Chunk(chunk.data, ready_s))


class BandwidthToxic(Toxic):
    """Passes at most ``rate`` KB/s (1 KB = 1000 bytes), in slices of at most 100 ms.

    Each slice waits ``len / rate``; time the clock overslept is taken off the next wait,
    so the average rate holds even when sleeps run long. Retired, it passes the rest of the
    chunk on at once, as one piece.
    """

    def __init__(self, spec: ToxicSpec, clock: Clock, rng: random.Random) -> None:
        super().__init__(spec, clock, rng)
        self._owed_s = 0.0

    async def on_data(self, chunk: Chunk, emit: Emit) -> None:
        rate_bytes_per_s = self.attributes["rate"] * 1000
        if rate_bytes_per_s <= 0:
            await emit(chunk)
            return
        slice_bytes = max(int(rate_bytes_per_s * _BANDWIDTH_SLICE_S), 1)
        data = chunk.data
        for start in range(0, len(data), slice_bytes):
            piece = data[start : start + slice_bytes]
            self._owed_s += len(piece) / rate_bytes_per_s
            if self._owed_s > 0:
                before_s = self.clock.now_s()
                if not await self.wait_s(self._owed_s):
                    await emit(Chunk(data[start:], chunk.ready_s))
                    return
                self._owed_s -= self.clock.now_s() - before_s
            await emit(Chunk(piece, chunk.ready_s))


class SlowCloseToxic(Toxic):
    """When the source closes, waits until ``delay`` ms after the close reached it before the
    close passes on (retired, at once)."""

    async def on_close(self, since_s: float) -> None:
        await self.wait_s(since_s + self.attributes["delay"] * _MS - self.clock.now_s())


class TimeoutToxic(Toxic):
    """Swallows every chunk; ``timeout`` ms after it began acting, closes the connection.

    The clock starts when the toxic starts acting on the connection (when the connection
    opened, or when the toxic was added to a connection already open), not at the first
    byte. With ``timeout`` 0 it never closes: data is lost until the toxic is removed.
    """

    def __init__(self, spec: ToxicSpec, clock: Clock, rng: random.Random) -> None:
        super().__init__(spec, clock, rng)
        timeout_ms = self.attributes["timeout"]
        self._deadline_s = None if timeout_ms == 0 else clock.now_s() + timeout_ms * _MS

    async def on_data(self, chunk: Chunk, emit: Emit) -> None:  # noqa: ARG002 - swallowed
        return

    def deadline_s(self) -> float | None:
        return self._deadline_s

    def expire(self) -> None:
        raise StreamCut(f"timeout toxic {self.spec.name!r}", toxic=self)


class ResetPeerToxic(Toxic):
    """At the first chunk, swallows it and resets the connection ``timeout`` ms later.

    Data arriving meanwhile is swallowed too. With ``timeout`` 0 the reset is immediate.
    """

    def __init__(self, spec: ToxicSpec, clock: Clock, rng: random.Random) -> None:
        super().__init__(spec, clock, rng)
        self._deadline_s: float | None = None

    async def on_data(self, chunk: Chunk, emit: Emit) -> None:  # noqa: ARG002 - swallowed
        if self._deadline_s is None:
            self._deadline_s = self.clock.now_s() + self.attributes["timeout"] * _MS
        if self.attributes["timeout"] == 0:
            self.expire()

    def deadline_s(self) -> float | None:
        return self._deadline_s

    def expire(self) -> None:
        raise StreamCut(f"reset_peer toxic {self.spec.name!r}", reset=True, toxic=self)


class SlicerToxic(Toxic):
    """Splits each chunk into pieces of ``average_size`` +- ``size_variation`` bytes (at
    least 1), waiting ``delay`` µs between two pieces. ``average_size`` 0 passes chunks whole.
    Retired, it passes the rest of the chunk on at once, as one piece."""

    async def on_data(self, chunk: Chunk, emit: Emit) -> None:
        average = self.attributes["average_size"]
        if average == 0:
            await emit(chunk)
            return
        variation = self.attributes["size_variation"]
        delay_s = self.attributes["delay"] * _US
        data = chunk.data
        start = 0
        while start < len(data):  # bounded: every piece is at least one byte
            size = average + (self.rng.randint(-variation, variation) if variation else 0)
            end = start + max(size, 1)
            if start > 0 and not await self.wait_s(delay_s):
                await emit(Chunk(data[start:], chunk.ready_s))
                return
            await emit(Chunk(data[start:end], chunk.ready_s))
            start = end


class LimitDataToxic(Toxic):
    """Passes ``bytes`` bytes, then closes the connection (the close passes through the
    toxics after it, like a close of the source)."""

    def __init__(self, spec: ToxicSpec, clock: Clock, rng: random.Random) -> None:
        super().__init__(spec, clock, rng)
        self.passed_bytes = 0

    async def on_data(self, chunk: Chunk, emit: Emit) -> None:
        room = self.attributes["bytes"] - self.passed_bytes
        if len(chunk.data) < room:
            self.passed_bytes += len(chunk.data)
            await emit(chunk)
            return
        if room > 0:
            self.passed_bytes += room
            await emit(Chunk(chunk.data[:room], chunk.ready_s))
        raise StreamCut(
            f"limit_data toxic {self.spec.name!r}: {self.passed_bytes} bytes passed", toxic=self
        )


_KINDS: Final[dict[str, type[Toxic]]] = {
    "latency": LatencyToxic,
    "bandwidth": BandwidthToxic,
    "slow_close": SlowCloseToxic,
    "timeout": TimeoutToxic,
    "reset_peer": ResetPeerToxic,
    "slicer": SlicerToxic,
    "limit_data": LimitDataToxic,
}


def make_toxic(spec: ToxicSpec, clock: Clock, rng: random.Random) -> Toxic | None:
    """The toxic of ``spec`` for one connection, or ``None`` when its toxicity draw (one per
    connection, from ``rng``) says it does not apply to this one. ``spec`` must be valid."""
    if rng.random() >= spec.toxicity:
        return None
    return _KINDS[spec.type](spec, clock, rng)
