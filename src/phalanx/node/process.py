"""Running a ``RaftNode`` as a process: until SIGTERM or SIGINT, then a clean close.

The process also configures structured logs (:mod:`phalanx.node.logs`), reports the node's
work to a :class:`~phalanx.node.metrics.PrometheusNodeObserver` and, with ``http_listen``,
serves ``/healthz``, ``/startup``, ``/ready`` and ``/metrics`` (:mod:`phalanx.node.http`)
from before the node opens until after it has closed; with ``admin`` too, also
``/admin/faults``, through which chaos tooling cuts and degrades the node's links.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Coroutine, Mapping
from pathlib import Path
from typing import Any

from phalanx.net.tls import TlsFiles
from phalanx.node.cluster_spec import Address, Member
from phalanx.node.driver import RaftNode
from phalanx.node.http import node_http_server
from phalanx.node.logs import LogFormat, configure_logging
from phalanx.node.metrics import PrometheusNodeObserver
from phalanx.storage.limits import StorageLimits

__all__ = ["run_node", "serve"]

_log = logging.getLogger(__name__)


async def serve(
    node_id: int,
    data_dir: Path | str,
    *,
    peer_listen: Address,
    client_listen: Address,
    members: Mapping[int, Member],
    cluster_id: str,
    tick_interval_s: float,
    fsync: bool = True,
    join: bool = False,
    http_listen: Address | None = None,
    tls: TlsFiles | None = None,
    admin: bool = False,
) -> None:
    """Start the node, wait for SIGTERM or SIGINT, close it."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    observer = PrometheusNodeObserver(process_metrics=True)
    node = RaftNode(
        node_id,
        data_dir,
        peer_listen,
        {i: m.peer for i, m in members.items() if i != node_id},
        cluster_id=cluster_id,
        tick_interval_s=tick_interval_s,
        client_listen=client_listen,
        client_addrs={i: m.client for i, m in members.items()},
        storage_limits=StorageLimits(fsync=fsync),
        join=join,
        observer=observer,
        tls=tls,
    )
    observer.watch_peers(
        lambda: {peer: s.queue_bytes for peer, s in node.transport_statistics().peers.items()}
    )
    async with contextlib.AsyncExitStack() as stack:
        # Serving from before the node opens, so /startup can say it is still replaying.
        http = None
        if http_listen is not None:
            faults = node.faults if admin else None
            http = node_http_server(node, observer.registry, http_listen, faults=faults)
            await stack.enter_async_context(http)
            _log.info("node %d serving health and metrics on http://%s:%d", node_id, *http.address)
        await stack.enter_async_context(node)
        _log.info(
            "node %d serving peers on %s:%d, clients on %s:%d",
            node_id,
            *node.listen_address,
            *(node.client_address or client_listen),
        )
        _say(f"phalanx node {node_id} ready")
        # Until a signal, or until the node's loops fail: closing the node then raises the
        # failure and the process exits non-zero, so a supervisor restarts it.
        waiters = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(node.wait_stopped())}
        _, pending = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        for waiter in pending:
            waiter.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if http is not None:
            http.health.set_ready(ready=False, reason="shutting down")
    _say(f"phalanx node {node_id} stopped")


def _run_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` on uvloop when it is installed (faster sockets and timers), else on the
    standard asyncio loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def run_node(
    node_id: int,
    data_dir: Path | str,
    *,
    peer_listen: Address,
    client_listen: Address,
    members: Mapping[int, Member],
    cluster_id: str,
    tick_interval_s: float,
    fsync: bool = True,
    join: bool = False,
    http_listen: Address | None = None,
    tls: TlsFiles | None = None,
    log_format: LogFormat = "text",
    log_level: str = "info",
    admin: bool = False,
) -> None:
    configure_logging(node_id, log_format=log_format, level=log_level)
    _run_loop(
        serve(
            node_id,
            data_dir,
            peer_listen=peer_listen,
            client_listen=client_listen,
            members=members,
            cluster_id=cluster_id,
            tick_interval_s=tick_interval_s,
            fsync=fsync,
            join=join,
            http_listen=http_listen,
            tls=tls,
            admin=admin,
        )
    )
