"""PrometheusNodeObserver: what each observer call does to the node's series."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from loopback import free_ports
from phalanx.client import AsyncClient
from phalanx.node import RaftNode
from phalanx.node.metrics import LABEL_VALUES_MAX, PrometheusNodeObserver
from phalanx.node.observer import NodeObserver


def value(observer: PrometheusNodeObserver, metric: str, /, **labels: str) -> float | None:
    return observer.registry.get_sample_value(metric, labels)


def test_is_a_node_observer_with_its_own_registry() -> None:
    first, second = PrometheusNodeObserver(), PrometheusNodeObserver()
    observer: NodeObserver = first
    observer.on_apply(5, 4)
    assert value(first, "phalanx_node_applied_index") == 4
    assert value(second, "phalanx_node_applied_index") == 0
    assert first.registry is not second.registry


def test_persist_fills_the_fsync_histogram_and_counts_entries() -> None:
    observer = PrometheusNodeObserver()
    observer.on_persist(0.003, 2)
    observer.on_persist(0.0004, 0)  # a hard-state-only save
    assert value(observer, "phalanx_node_fsync_duration_seconds_count") == 2
    bucket = "phalanx_node_fsync_duration_seconds_bucket"
    assert value(observer, bucket, le="0.0002") == 0
    assert value(observer, bucket, le="0.0004") == 1
    assert value(observer, bucket, le="0.0016") == 1
    assert value(observer, bucket, le="0.0032") == 2
    assert value(observer, "phalanx_node_persisted_entries_total") == 2


def test_apply_sets_commit_and_applied_index() -> None:
    observer = PrometheusNodeObserver()
    observer.on_apply(12, 10)
    observer.on_apply(12, 12)
    assert value(observer, "phalanx_node_commit_index") == 12
    assert value(observer, "phalanx_node_applied_index") == 12


def test_proposals_are_counted_by_kind() -> None:
    observer = PrometheusNodeObserver()
    for kind in ("kv", "kv", "conf_change"):
        observer.on_proposal(kind)
    assert value(observer, "phalanx_node_proposals_total", kind="kv") == 2
    assert value(observer, "phalanx_node_proposals_total", kind="conf_change") == 1


def test_requests_by_operation_and_outcome() -> None:
    observer = PrometheusNodeObserver()
    observer.on_request("put", 0.002, "ok")
    observer.on_request("put", 5.0, "unknown")
    observer.on_request("get", 0.001, "ok")
    observer.on_request("get", 0.001, "weird")
    count = "phalanx_node_request_duration_seconds_count"
    assert value(observer, count, op="put", outcome="ok") == 1
    assert value(observer, count, op="put", outcome="unknown") == 1
    assert value(observer, count, op="get", outcome="ok") == 1
    assert value(observer, count, op="get", outcome="other") == 1


def test_operation_labels_stop_growing_at_their_limit() -> None:
    observer = PrometheusNodeObserver()
    for i in range(LABEL_VALUES_MAX + 5):
        observer.on_request(f"op{i}", 0.001, "ok")
    count = "phalanx_node_request_duration_seconds_count"
    assert value(observer, count, op=f"op{LABEL_VALUES_MAX - 1}", outcome="ok") == 1
    assert value(observer, count, op=f"op{LABEL_VALUES_MAX}", outcome="ok") is None
    assert value(observer, count, op="other", outcome="ok") == 5


def test_role_term_leader_and_leader_changes() -> None:
    observer = PrometheusNodeObserver()
    observer.on_role(1, "candidate", 0)
    assert value(observer, "phalanx_node_has_leader") == 0
    assert value(observer, "phalanx_node_role", role="candidate") == 1
    observer.on_role(1, "leader", 1)
    assert value(observer, "phalanx_node_term") == 1
    assert value(observer, "phalanx_node_is_leader") == 1
    assert value(observer, "phalanx_node_has_leader") == 1
    assert value(observer, "phalanx_node_leader_id") == 1
    assert value(observer, "phalanx_node_role", role="leader") == 1
    assert value(observer, "phalanx_node_role", role="candidate") == 0
    # Losing the leader and finding the same one again is no change; a new leader is one.
    observer.on_role(2, "follower", 0)
    observer.on_role(2, "follower", 1)
    assert value(observer, "phalanx_node_leader_changes_total") == 1
    observer.on_role(3, "follower", 3)
    assert value(observer, "phalanx_node_leader_changes_total") == 2
    assert value(observer, "phalanx_node_is_leader") == 0
    assert value(observer, "phalanx_node_role", role="leader") == 0
    assert value(observer, "phalanx_node_role", role="follower") == 1
    assert value(observer, "phalanx_node_term") == 3


def test_peer_queue_bytes_are_read_at_scrape_time() -> None:
    queues = {2: 0, 3: 0}
    observer = PrometheusNodeObserver(peer_queue_bytes=lambda: queues)
    assert value(observer, "phalanx_node_peer_queue_bytes", peer="3") == 0
    queues[3] = 4096
    assert value(observer, "phalanx_node_peer_queue_bytes", peer="3") == 4096
    assert value(observer, "phalanx_node_peer_queue_bytes", peer="2") == 0


def test_peers_can_be_watched_after_construction_once() -> None:
    observer = PrometheusNodeObserver()
    assert value(observer, "phalanx_node_peer_queue_bytes", peer="2") is None
    observer.watch_peers(lambda: {2: 10})
    assert value(observer, "phalanx_node_peer_queue_bytes", peer="2") == 10
    with pytest.raises(ValueError, match="peer_queue_bytes"):
        observer.watch_peers(dict)


def test_a_failing_peer_source_leaves_the_rest_of_the_scrape() -> None:
    def closed() -> dict[int, int]:
        raise RuntimeError("the node is not started")

    observer = PrometheusNodeObserver(peer_queue_bytes=closed)
    observer.on_apply(1, 1)
    text = generate_latest(observer.registry).decode()
    assert "phalanx_node_applied_index 1.0" in text
    assert 'phalanx_node_peer_queue_bytes{peer="' not in text


def test_process_metrics_on_request() -> None:
    assert value(PrometheusNodeObserver(), "process_open_fds") is None
    with_process = PrometheusNodeObserver(process_metrics=True)
    assert (value(with_process, "process_open_fds") or 0) > 0


# -- a real cluster ---------------------------------------------------------------------------

IDS = (1, 2, 3)
TICK_S = 0.02
DEADLINE_S = 10.0


def requests_ok(observer: PrometheusNodeObserver) -> float:
    """Client requests answered ok, over every operation."""
    return sum(
        sample.value
        for family in observer.registry.collect()
        for sample in family.samples
        if sample.name == "phalanx_node_request_duration_seconds_count"
        and sample.labels["outcome"] == "ok"
    )


async def until(predicate: Callable[[], bool], what: str) -> None:
    try:
        async with asyncio.timeout(DEADLINE_S):
            while True:
                if predicate():
                    return
                await asyncio.sleep(TICK_S)
    except TimeoutError:
        pytest.fail(f"not within {DEADLINE_S} s: {what}")


async def test_a_three_node_cluster_reports_through_its_observers(tmp_path: Path) -> None:
    ports = free_ports(2 * len(IDS))
    peer = {i: ("127.0.0.1", ports[2 * k]) for k, i in enumerate(IDS)}
    client = {i: ("127.0.0.1", ports[2 * k + 1]) for k, i in enumerate(IDS)}
    observers = {i: PrometheusNodeObserver() for i in IDS}
    async with AsyncExitStack() as stack:
        nodes: dict[int, RaftNode] = {}
        for i in IDS:
            node = RaftNode(
                i,
                tmp_path / f"n{i}",
                peer[i],
                {j: a for j, a in peer.items() if j != i},
                cluster_id="test-metrics",
                tick_interval_s=TICK_S,
                client_listen=client[i],
                client_addrs=client,
                observer=observers[i],
            )
            transport_statistics = node.transport_statistics
            observers[i].watch_peers(
                lambda stats=transport_statistics: {
                    p: s.queue_bytes for p, s in stats().peers.items()
                }
            )
            nodes[i] = await stack.enter_async_context(node)

        def one_leader_known() -> bool:
            leaders = [o for o in observers.values() if value(o, "phalanx_node_is_leader") == 1]
            return len(leaders) == 1 and all(
                value(o, "phalanx_node_has_leader") == 1 for o in observers.values()
            )

        await until(one_leader_known, "one leader, known to every node")
        leader_id = next(i for i, n in nodes.items() if n.is_leader)
        leader = observers[leader_id]

        async with AsyncClient([f"{h}:{p}" for h, p in client.values()]) as kv:
            await kv.put(b"k", b"v")
        applied = nodes[leader_id].store.applied_index
        await until(
            lambda: all(
                value(o, "phalanx_node_applied_index") == applied for o in observers.values()
            ),
            "every node reports the put applied",
        )
        assert requests_ok(leader) >= 1
        assert (value(leader, "phalanx_node_proposals_total", kind="kv") or 0) >= 1
        assert value(leader, "phalanx_node_role", role="leader") == 1
        for i, observer in observers.items():
            assert value(observer, "phalanx_node_commit_index") == applied
            assert (value(observer, "phalanx_node_fsync_duration_seconds_count") or 0) > 0
            assert (value(observer, "phalanx_node_leader_changes_total") or 0) >= 1
            assert value(observer, "phalanx_node_leader_id") == leader_id
            assert value(observer, "phalanx_node_term") == nodes[i].status().term
            for other in IDS:
                if other != i:
                    queued = value(observer, "phalanx_node_peer_queue_bytes", peer=str(other))
                    assert queued is not None
                    assert queued >= 0
