"""Running a ``RaftNode`` as a process: until SIGTERM or SIGINT, then a clean close."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Mapping
from pathlib import Path

from phalanx.node.cluster_spec import Address, Member
from phalanx.node.driver import RaftNode
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
) -> None:
    """Start the node, wait for SIGTERM or SIGINT, close it."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
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
    )
    async with node:
        _log.info(
            "node %d serving peers on %s:%d, clients on %s:%d",
            node_id,
            *node.listen_address,
            *(node.client_address or client_listen),
        )
        _say(f"phalanx node {node_id} ready")
        await stop.wait()
    _say(f"phalanx node {node_id} stopped")


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
) -> None:
    asyncio.run(
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
        )
    )
