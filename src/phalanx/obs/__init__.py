"""Observability: Prometheus metrics from the events and statistics of Phalanx primitives."""

from phalanx.obs.metrics import PrometheusMetrics

__all__ = ["PrometheusMetrics"]
