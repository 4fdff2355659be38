"""One bulkhead per dependency, built from a small configuration.

This module owns :class:`BulkheadRegistry`: a read-only mapping from a dependency's name to
its bulkhead, built by :meth:`BulkheadRegistry.from_config` from either a mapping::

    {"payment": 20, "inventory": 10, "user": 30}

or the text form used in the guide's thread-pool isolation block::

    Payment service: 20 threads
    Inventory service: 10 threads
    User service: 30 threads

Names are normalised (lower case, a trailing "service" or "pool" dropped, spaces become
underscores), so ``registry["payment"]`` and ``registry["Payment service"]`` are the same
bulkhead. ``kind="semaphore"`` (the default) builds :class:`~phalanx.resilience.bulkhead.Bulkhead`
objects limiting concurrent calls; ``kind="thread_pool"`` builds
:class:`~phalanx.resilience.threadpool.ThreadPoolBulkhead` objects with their own threads.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from types import TracebackType
from typing import Generic, Literal, TypeVar, overload

from phalanx.clock import SYSTEM_CLOCK, Clock
from phalanx.resilience.bulkhead import Bulkhead, BulkheadStatistics
from phalanx.resilience.config import parse_count
from phalanx.resilience.events import Listener
from phalanx.resilience.threadpool import ThreadPoolBulkhead, ThreadPoolStatistics

__all__ = ["BulkheadRegistry", "normalize_name", "parse_limits"]

B = TypeVar("B", Bulkhead, ThreadPoolBulkhead)

Kind = Literal["semaphore", "thread_pool"]

# A limit on everything, including how many dependencies one registry describes.
DEPENDENCIES_MAX = 1000

_UNITS = ("threads", "thread", "connections", "connection", "calls", "call", "slots", "slot")
_LINE_RE = re.compile(r"^\s*(?P<name>[^:#]+?)\s*:\s*(?P<count>\d+)\s*(?P<unit>[A-Za-z]*)\s*$")
_SUFFIX_RE = re.compile(r"[\s_-]+(service|pool)$")


def normalize_name(name: str) -> str:
    """``"Payment service"`` -> ``"payment"``; ``"External API pool"`` -> ``"external_api"``."""
    if not isinstance(name, str):
        raise TypeError(f"a dependency name must be a string, got {name!r}")
    lowered = name.strip().lower()
    stripped = _SUFFIX_RE.sub("", lowered)
    return re.sub(r"[\s-]+", "_", stripped or lowered)


def parse_limits(text: str) -> dict[str, int]:
    """Parse lines such as ``Payment service: 20 threads`` into ``{"payment": 20}``.

    Blank lines and ``#`` comments are skipped. The unit word is optional and must be one
    of threads, connections, calls or slots; a line in any other shape is a ``ValueError``.
    """
    limits: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = _LINE_RE.match(line)
        unit = match.group("unit").lower() if match else ""
        if match is None or (unit and unit not in _UNITS):
            raise ValueError(
                f"config: line {number} {raw.strip()!r} is not like 'Payment service: 20 threads'"
            )
        name = normalize_name(match.group("name"))
        if name in limits:
            raise ValueError(f"config: line {number} repeats the dependency {name!r}")
        limits[name] = parse_count(f"config[{name!r}]", int(match.group("count")), minimum=1)
    return limits


class BulkheadRegistry(Mapping[str, B], Generic[B]):
    """A read-only mapping of dependency name to its bulkhead.

    Build it with :meth:`from_config`, or pass already constructed bulkheads. The registry
    owns thread pools it holds: :meth:`shutdown` (or leaving a ``with`` block) stops them.
    """

    def __init__(self, bulkheads: Mapping[str, B]) -> None:
        if len(bulkheads) > DEPENDENCIES_MAX:
            raise ValueError(f"bulkheads: more than {DEPENDENCIES_MAX} dependencies")
        normalized: dict[str, B] = {}
        for name, bulkhead in bulkheads.items():
            key = normalize_name(name)
            if not key:
                raise ValueError(f"bulkheads: empty dependency name {name!r}")
            if key in normalized:
                raise ValueError(f"bulkheads: {name!r} duplicates the dependency {key!r}")
            normalized[key] = bulkhead
        self._bulkheads: dict[str, B] = normalized

    @overload
    @classmethod
    def from_config(
        cls,
        config: Mapping[str, int | str] | str,
        *,
        kind: Literal["semaphore"] = "semaphore",
        max_queue: int = 0,
        max_wait_s: float | str = 0.0,
        clock: Clock = SYSTEM_CLOCK,
        listeners: tuple[Listener, ...] = (),
    ) -> BulkheadRegistry[Bulkhead]: ...

    @overload
    @classmethod
    def from_config(
        cls,
        config: Mapping[str, int | str] | str,
        *,
        kind: Literal["thread_pool"],
        max_queue: int = 0,
        max_wait_s: float | str = 0.0,
        clock: Clock = SYSTEM_CLOCK,
        listeners: tuple[Listener, ...] = (),
    ) -> BulkheadRegistry[ThreadPoolBulkhead]: ...

    @classmethod
    def from_config(
        cls,
        config: Mapping[str, int | str] | str,
        *,
        kind: Kind = "semaphore",
        max_queue: int = 0,
        max_wait_s: float | str = 0.0,
        clock: Clock = SYSTEM_CLOCK,
        listeners: tuple[Listener, ...] = (),
    ) -> BulkheadRegistry[Bulkhead] | BulkheadRegistry[ThreadPoolBulkhead]:
        """Build one bulkhead per dependency from ``{name: limit}`` or the guide's text form.

        The limit is ``max_concurrent`` for ``kind="semaphore"`` and ``max_workers`` for
        ``kind="thread_pool"``; ``max_queue`` applies to every dependency, ``max_wait_s``
        to semaphore bulkheads only (a thread pool either accepts work or refuses it).
        """
        if isinstance(config, str):
            limits = parse_limits(config)
        elif isinstance(config, Mapping):
            limits = {}
            for name, value in config.items():
                key = normalize_name(name)
                if key in limits:
                    raise ValueError(f"config: {name!r} duplicates the dependency {key!r}")
                limits[key] = _parse_limit(key, value)
        else:
            raise ValueError(f"config: expected a mapping or text, got {type(config).__name__}")
        if not limits:
            raise ValueError("config: no dependencies given")
        if kind == "semaphore":
            return BulkheadRegistry[Bulkhead](
                {
                    name: Bulkhead(
                        max_concurrent=limit,
                        max_queue=max_queue,
                        max_wait_s=max_wait_s,
                        name=name,
                        clock=clock,
                        listeners=listeners,
                    )
                    for name, limit in limits.items()
                }
            )
        if kind == "thread_pool":
            return BulkheadRegistry[ThreadPoolBulkhead](
                {
                    name: ThreadPoolBulkhead(
                        max_workers=limit,
                        max_queue=max_queue,
                        name=name,
                        clock=clock,
                        listeners=listeners,
                    )
                    for name, limit in limits.items()
                }
            )
        raise ValueError(f"kind: must be 'semaphore' or 'thread_pool', got {kind!r}")

    def __getitem__(self, name: str) -> B:
        try:
            return self._bulkheads[name]
        except KeyError:
            pass
        key = normalize_name(name)
        try:
            return self._bulkheads[key]
        except KeyError:
            known = ", ".join(sorted(self._bulkheads))
            raise KeyError(f"no bulkhead for {name!r}; known: {known}") from None

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and normalize_name(name) in self._bulkheads

    def __iter__(self) -> Iterator[str]:
        return iter(self._bulkheads)

    def __len__(self) -> int:
        return len(self._bulkheads)

    def __repr__(self) -> str:
        return f"BulkheadRegistry({self._bulkheads!r})"

    def statistics(self) -> dict[str, BulkheadStatistics | ThreadPoolStatistics]:
        """A snapshot of every bulkhead, by dependency name."""
        return {name: bulkhead.statistics() for name, bulkhead in self._bulkheads.items()}

    def shutdown(self, *, wait: bool = True) -> None:
        """Stop the thread pools this registry holds (semaphore bulkheads need nothing)."""
        for bulkhead in self._bulkheads.values():
            if isinstance(bulkhead, ThreadPoolBulkhead):
                bulkhead.shutdown(wait=wait)

    def __enter__(self) -> BulkheadRegistry[B]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.shutdown(wait=True)


def _parse_limit(name: str, value: int | str) -> int:
    """A limit from ``20`` or ``"20"`` or ``"20 threads"``."""
    if isinstance(value, str):
        parts = value.split()
        if len(parts) == 2 and parts[1].lower() in _UNITS:
            value = parts[0]
    return parse_count(f"config[{name!r}]", value, minimum=1)
