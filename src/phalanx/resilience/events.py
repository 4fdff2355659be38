"""Events emitted by resilience primitives, and the listeners that receive them.

A primitive emits an :class:`Event` for each thing worth counting: a retry scheduled, a
breaker changing state, a call rejected by a bulkhead. Listeners are plain callables; the
Prometheus exporter in :mod:`phalanx.obs.metrics` is one. Emission costs nothing when no
listener is registered (the hot path checks a tuple's truthiness), and a listener that raises
is logged and ignored: observing a call must never break it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

__all__ = ["Emitter", "Event", "Listener", "Observable"]

_log = logging.getLogger("phalanx.resilience")
_EMPTY: Mapping[str, object] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Event:
    """One observable happening.

    ``primitive`` is the kind of source (``"retry"``, ``"breaker"``, ``"bulkhead"``...),
    ``name`` the instance's name, ``kind`` what happened (``"retry"``, ``"state_change"``,
    ``"rejected"``...), ``at_s`` the source clock's monotonic time, and ``data`` details such
    as ``{"from": "closed", "to": "open"}`` or ``{"delay_s": 0.8, "attempt": 2}``.
    """

    primitive: str
    name: str
    kind: str
    at_s: float
    data: Mapping[str, object] = field(default_factory=lambda: _EMPTY)


Listener = Callable[[Event], None]


class Emitter:
    """Holds the listeners of one primitive and delivers its events to them."""

    __slots__ = ("_listeners", "_lock", "_name", "_primitive")

    def __init__(self, primitive: str, name: str, listeners: tuple[Listener, ...] = ()) -> None:
        self._primitive = primitive
        self._name = name
        self._listeners: tuple[Listener, ...] = tuple(listeners)
        self._lock = threading.Lock()

    @property
    def active(self) -> bool:
        """True when at least one listener is registered."""
        return bool(self._listeners)

    def add_listener(self, listener: Listener) -> None:
        with self._lock:
            self._listeners = (*self._listeners, listener)

    def remove_listener(self, listener: Listener) -> None:
        with self._lock:
            # Equality, not identity: bound methods such as ``events.append`` are new objects
            # each time they are looked up, but compare equal.
            self._listeners = tuple(x for x in self._listeners if x != listener)

    def emit(self, kind: str, at_s: float, data: Mapping[str, object] | None = None) -> None:
        listeners = self._listeners
        if not listeners:
            return
        event = Event(self._primitive, self._name, kind, at_s, data if data else _EMPTY)
        for listener in listeners:
            try:
                listener(event)
            except Exception:
                _log.exception("event listener %r failed on %r", listener, event)


class Observable:
    """Mixin for primitives that own an :class:`Emitter` in ``self._emitter``."""

    __slots__ = ()
    _emitter: Emitter

    def add_listener(self, listener: Listener) -> None:
        """Receive every future event of this primitive."""
        self._emitter.add_listener(listener)

    def remove_listener(self, listener: Listener) -> None:
        """Stop delivering events to ``listener``."""
        self._emitter.remove_listener(listener)
