"""Prometheus series for one node: :class:`PrometheusNodeObserver`.

The observer is a :class:`~phalanx.node.observer.NodeObserver`: the node calls it on its hot
paths (a save, an apply, a proposal, a finished request, a change of term, role or leader)
and each call only updates a counter, a gauge or a histogram. What the node already counts
elsewhere is read at scrape time instead (the bytes queued for each peer). Every node has its
own :class:`~prometheus_client.CollectorRegistry`, so several nodes in one process (the test
clusters) never share a series; :attr:`PrometheusNodeObserver.registry` is what ``/metrics``
serves (:mod:`phalanx.node.http`).

Series (``docs/node.md`` lists them with their types and labels):

* ``phalanx_node_term``, ``phalanx_node_leader_id``, ``phalanx_node_is_leader``,
  ``phalanx_node_has_leader``, ``phalanx_node_role{role}``, ``phalanx_node_leader_changes_total``;
* ``phalanx_node_commit_index``, ``phalanx_node_applied_index``;
* ``phalanx_node_proposals_total{kind}``;
* ``phalanx_node_fsync_duration_seconds`` (histogram) and ``phalanx_node_persisted_entries_total``;
* ``phalanx_node_request_duration_seconds{op, outcome}`` (histogram);
* ``phalanx_node_peer_queue_bytes{peer}``, read at scrape time.

Label values come from the node's own code, but a limit still caps each label's distinct
values (``LABEL_VALUES_MAX``): past it, new values are counted under ``other``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from phalanx.node.observer import NodeObserver

__all__ = [
    "FSYNC_BUCKETS_S",
    "LABEL_VALUES_MAX",
    "OUTCOMES",
    "REQUEST_BUCKETS_S",
    "ROLES",
    "PrometheusNodeObserver",
]

#: 0.1 ms to 6.6 s, doubling: a disabled fsync lands in the first buckets, a sick disk in the
#: last ones.
FSYNC_BUCKETS_S: Final = tuple(0.0001 * 2**k for k in range(17))
#: 0.5 ms to 8.2 s, doubling: the default request timeout (5 s) falls inside.
REQUEST_BUCKETS_S: Final = tuple(0.0005 * 2**k for k in range(15))
#: The roles a node reports, in the order of ``phalanx.raft.types.Role``.
ROLES: Final = ("follower", "pre_candidate", "candidate", "leader", "learner")
#: A request's outcome: ``ok``, ``fail`` (definitely not applied), ``unknown`` (may have been).
OUTCOMES: Final = ("ok", "fail", "unknown")
#: Distinct values one label (an operation, a proposal kind) may take before ``other``.
LABEL_VALUES_MAX: Final = 32
OTHER: Final = "other"

_NAMESPACE = "phalanx_node"
_NO_LEADER = 0

_log = logging.getLogger(__name__)


class _BoundedLabel:
    """Keeps a label's distinct values under ``LABEL_VALUES_MAX``; later ones become ``other``."""

    def __init__(self, known: tuple[str, ...] = (), values_max: int = LABEL_VALUES_MAX) -> None:
        self._values = set(known)
        self._values_max = values_max
        self._lock = threading.Lock()

    def __call__(self, value: str) -> str:
        with self._lock:
            if value in self._values:
                return value
            if len(self._values) >= self._values_max:
                return OTHER
            self._values.add(value)
            return value


class _PeerQueueCollector(Collector):
    """``phalanx_node_peer_queue_bytes{peer}``, read from ``source`` at every scrape."""

    def __init__(self, source: Callable[[], Mapping[int, int]]) -> None:
        self._source = source

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(
            f"{_NAMESPACE}_peer_queue_bytes",
            "Bytes queued or being written to each peer (bounded by the transport's limit).",
            labels=["peer"],
        )

    def describe(self) -> Iterator[Metric]:
        yield self._family()

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        try:
            queues = dict(self._source())
        except Exception:
            # A source that fails (the node not started yet, or closed) must not fail the
            # whole scrape: the series is absent from this one.
            _log.debug("peer queue statistics unavailable", exc_info=True)
            queues = {}
        for peer, queue_bytes in sorted(queues.items()):
            family.add_metric([str(peer)], float(queue_bytes))
        yield family


class PrometheusNodeObserver(NodeObserver):
    """Turns what a node reports into Prometheus series in its own registry.

    ``peer_queue_bytes`` (or :meth:`watch_peers`, for a node built after its observer)
    returns, per peer id, the bytes waiting to be written to it; it is
    called at scrape time, on the thread that scrapes (the node's event loop when served by
    :mod:`phalanx.node.http`). ``process_metrics`` adds prometheus_client's ``process_*``
    series (CPU, memory, open files) for a registry that is the only one of its process.
    """

    def __init__(
        self,
        *,
        registry: CollectorRegistry | None = None,
        peer_queue_bytes: Callable[[], Mapping[int, int]] | None = None,
        process_metrics: bool = False,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        reg = self.registry
        self._term = Gauge(
            "term", "The node's current Raft term.", namespace=_NAMESPACE, registry=reg
        )
        self._leader_id = Gauge(
            "leader_id",
            "The leader this node knows of; 0 for none.",
            namespace=_NAMESPACE,
            registry=reg,
        )
        self._is_leader = Gauge(
            "is_leader", "1 while this node leads, else 0.", namespace=_NAMESPACE, registry=reg
        )
        self._has_leader = Gauge(
            "has_leader",
            "1 while this node knows a leader, else 0.",
            namespace=_NAMESPACE,
            registry=reg,
        )
        self._role = Gauge(
            "role",
            "1 for the node's current role, 0 for the others.",
            ["role"],
            namespace=_NAMESPACE,
            registry=reg,
        )
        self._leader_changes = Counter(
            "leader_changes",
            "Times this node learned of a leader other than the last one it knew.",
            namespace=_NAMESPACE,
            registry=reg,
        )
        self._commit_index = Gauge(
            "commit_index",
            "The highest log index known committed.",
            namespace=_NAMESPACE,
            registry=reg,
        )
        self._applied_index = Gauge(
            "applied_index",
            "The highest log index applied to the state machine.",
            namespace=_NAMESPACE,
            registry=reg,
        )
        self._proposals = Counter(
            "proposals",
            "Entries proposed to the log by this node, by kind.",
            ["kind"],
            namespace=_NAMESPACE,
            registry=reg,
        )
        self._fsync = Histogram(
            "fsync_duration_seconds",
            "Duration of each save of the log and hard state (one fsync unless disabled).",
            namespace=_NAMESPACE,
            buckets=FSYNC_BUCKETS_S,
            registry=reg,
        )
        self._persisted_entries = Counter(
            "persisted_entries",
            "Log entries written by those saves.",
            namespace=_NAMESPACE,
            registry=reg,
        )
        self._requests = Histogram(
            "request_duration_seconds",
            "Duration of client requests by operation and outcome (ok, fail, unknown).",
            ["op", "outcome"],
            namespace=_NAMESPACE,
            buckets=REQUEST_BUCKETS_S,
            registry=reg,
        )
        for role in ROLES:
            self._role.labels(role).set(0)
        self._ops = _BoundedLabel()
        self._kinds = _BoundedLabel()
        self._roles = _BoundedLabel(ROLES, len(ROLES))
        self._outcomes = _BoundedLabel(OUTCOMES, len(OUTCOMES))
        self._last_role = ""
        self._known_leader = _NO_LEADER
        self._lock = threading.Lock()
        self._peers_watched = False
        if peer_queue_bytes is not None:
            self.watch_peers(peer_queue_bytes)
        if process_metrics:
            ProcessCollector(registry=reg)

    def watch_peers(self, peer_queue_bytes: Callable[[], Mapping[int, int]]) -> None:
        """Export ``peer_queue_bytes()`` at every scrape (once the node exists to read from).

        Only one source: a second call raises ``ValueError``.
        """
        if self._peers_watched:
            raise ValueError("peer_queue_bytes: a source is already watched")
        self.registry.register(_PeerQueueCollector(peer_queue_bytes))
        self._peers_watched = True

    # -- NodeObserver -------------------------------------------------------------------------

    def on_persist(self, seconds: float, entries: int) -> None:
        self._fsync.observe(max(seconds, 0.0))
        if entries > 0:
            self._persisted_entries.inc(entries)

    def on_apply(self, commit_index: int, applied_index: int) -> None:
        self._commit_index.set(commit_index)
        self._applied_index.set(applied_index)

    def on_proposal(self, kind: str) -> None:
        self._proposals.labels(self._kinds(kind)).inc()

    def on_request(self, op: str, seconds: float, outcome: str) -> None:
        self._requests.labels(self._ops(op), self._outcomes(outcome)).observe(max(seconds, 0.0))

    def on_role(self, term: int, role: str, leader: int) -> None:
        role = self._roles(role)
        with self._lock:
            last_role, self._last_role = self._last_role, role
            # Counted when a leader becomes known that differs from the last one known (the
            # first one included); losing the leader, or finding the same one again, is not.
            changed = leader not in (_NO_LEADER, self._known_leader)
            if changed:
                self._known_leader = leader
        self._term.set(term)
        self._leader_id.set(leader)
        self._has_leader.set(1 if leader != _NO_LEADER else 0)
        self._is_leader.set(1 if role == "leader" else 0)
        if role != last_role:
            if last_role:
                self._role.labels(last_role).set(0)
            self._role.labels(role).set(1)
        if changed:
            self._leader_changes.inc()

    def __repr__(self) -> str:
        return f"PrometheusNodeObserver(registry={self.registry!r})"
