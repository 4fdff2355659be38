"""Prometheus series for resilience primitives.

:class:`PrometheusMetrics` is an event listener and a collector at once::

    metrics = PrometheusMetrics()          # registers on prometheus_client's default registry
    metrics.watch(retry, breaker, bulkhead)

It exports

* ``phalanx_resilience_events_total{primitive, name, kind}``: every event (retries, give-ups,
  rejections, state changes...);
* ``phalanx_breaker_state{name}``: 0 closed, 1 half-open, 2 open;
* ``phalanx_retry_delay_seconds{name}``: a histogram of backoff delays;
* ``phalanx_<primitive>_<field>{name}``: every numeric field of each watched primitive's
  ``statistics()``, read at scrape time (bulkhead occupancy, queue lengths, failure rates),
  so nothing is computed on the call path.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
from collections.abc import Iterator
from typing import Any, Final, Protocol

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from phalanx.resilience.events import Event, Listener

__all__ = ["PrometheusMetrics"]

BREAKER_STATE_VALUES: Final = {"closed": 0.0, "half_open": 1.0, "open": 2.0}
RETRY_DELAY_BUCKETS_S: Final = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)
WATCHED_MAX: Final = 10_000

_log = logging.getLogger("phalanx.obs.metrics")


class Watchable(Protocol):
    def add_listener(self, listener: Listener) -> None: ...


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _series_key(primitive: object) -> tuple[str, str]:
    """The (kind, name) pair that labels a primitive's statistics series."""
    kind = _snake(type(primitive).__name__)
    return kind, str(getattr(primitive, "name", kind))


class PrometheusMetrics(Collector):
    """Listens to events and collects ``statistics()`` of watched primitives."""

    def __init__(
        self, registry: CollectorRegistry | None = REGISTRY, *, namespace: str = "phalanx"
    ) -> None:
        self.namespace = namespace
        self._lock = threading.Lock()
        self._watched: list[Any] = []
        self._events = Counter(
            "resilience_events",
            "Events emitted by resilience primitives.",
            ["primitive", "name", "kind"],
            namespace=namespace,
            registry=registry,
        )
        self._breaker_state = Gauge(
            "breaker_state",
            "Circuit breaker state: 0 closed, 1 half-open, 2 open.",
            ["name"],
            namespace=namespace,
            registry=registry,
        )
        self._retry_delay = Histogram(
            "retry_delay_seconds",
            "Backoff delays chosen before retries.",
            ["name"],
            namespace=namespace,
            buckets=RETRY_DELAY_BUCKETS_S,
            registry=registry,
        )
        if registry is not None:
            registry.register(self)

    def __call__(self, event: Event) -> None:
        self._events.labels(event.primitive, event.name, event.kind).inc()
        if event.kind == "state_change":
            target = event.data.get("to")
            value = BREAKER_STATE_VALUES.get(str(getattr(target, "value", target)))
            if value is not None:
                self._breaker_state.labels(event.name).set(value)
        elif event.kind == "retry":
            delay_s = event.data.get("delay_s")
            if isinstance(delay_s, int | float):
                self._retry_delay.labels(event.name).observe(float(delay_s))

    def watch(self, *primitives: Watchable) -> None:
        """Subscribe to the events of ``primitives`` and export their statistics."""
        with self._lock:
            taken = {_series_key(p) for p in self._watched}
            fresh: list[Any] = []
            for primitive in primitives:
                if any(primitive is p for p in (*self._watched, *fresh)):
                    continue  # watching twice would count every event twice
                key = _series_key(primitive)
                if key in taken:
                    raise ValueError(
                        f"primitives: another watched {key[0]} is already named {key[1]!r}; "
                        "give each primitive a distinct name"
                    )
                taken.add(key)
                fresh.append(primitive)
            if len(self._watched) + len(fresh) > WATCHED_MAX:
                raise ValueError(f"primitives: at most {WATCHED_MAX} can be watched")
            self._watched.extend(fresh)
        for primitive in fresh:
            primitive.add_listener(self)
            state = getattr(primitive, "state", None)
            name = getattr(primitive, "name", None)
            value = BREAKER_STATE_VALUES.get(str(getattr(state, "value", state)))
            if value is not None and name is not None:
                self._breaker_state.labels(str(name)).set(value)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            watched = list(self._watched)
        families: dict[str, GaugeMetricFamily] = {}
        for primitive in watched:
            statistics = getattr(primitive, "statistics", None)
            if not callable(statistics):
                continue
            try:
                stats = statistics()
            except Exception:
                # One broken primitive must not fail the whole scrape.
                _log.exception("statistics() of %r failed", primitive)
                continue
            if not dataclasses.is_dataclass(stats):
                continue
            kind, name = _series_key(primitive)
            for field in dataclasses.fields(stats):
                value = getattr(stats, field.name)
                if isinstance(value, bool):
                    value = int(value)
                if not isinstance(value, int | float):
                    continue
                metric = f"{self.namespace}_{kind}_{field.name}"
                family = families.get(metric)
                if family is None:
                    family = GaugeMetricFamily(
                        metric,
                        f"{type(primitive).__name__}.statistics().{field.name}",
                        labels=["name"],
                    )
                    families[metric] = family
                family.add_metric([name], float(value))
        yield from families.values()
