"""How many fsyncs a Phalanx write costs, and its latency, on three in-process nodes.

Run: ``.venv/bin/python benchmarks/cluster_fsyncs_per_write.py [--writes 300]``; add
``--phalanx-src DIR`` to import phalanx from another ``src`` directory (a patched copy) and
compare. Three ``RaftNode`` objects run in this one process on loopback, with fsync on;
every ``os.fdatasync`` of the process is counted. One writer puts ``--writes`` keys one after
the other (p50/p90 latency and fdatasyncs per write over the three nodes), then 16 writers
put 60 keys each (writes per second, and the process's CPU time per write). Running the
nodes in one process takes the scheduling of three processes on a busy machine out of the
figures, which makes this a steadier comparison of two versions of the write path than
``bench_cluster.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
import tempfile
import time
from collections.abc import Callable

__all__ = ["main"]

VALUE = b"v" * 256


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _count_fdatasync() -> list[int]:
    counter = [0]
    original: Callable[[int], None] = os.fdatasync

    def counting(fd: int) -> None:
        counter[0] += 1
        original(fd)

    os.fdatasync = counting
    return counter


async def run(writes: int) -> str:
    from phalanx.node import RaftNode

    syncs = _count_fdatasync()
    ports = _free_ports(3)
    addresses = {i + 1: ("127.0.0.1", ports[i]) for i in range(3)}
    with tempfile.TemporaryDirectory(prefix="phalanx-fsyncs-") as root:
        nodes = [
            RaftNode(
                i,
                f"{root}/n{i}",
                addresses[i],
                {j: a for j, a in addresses.items() if j != i},
                cluster_id="fsyncs",
            )
            for i in addresses
        ]
        try:
            for node in nodes:
                await node.start()
            deadline = time.monotonic() + 30
            while not any(n.is_leader for n in nodes):
                if time.monotonic() > deadline:
                    raise RuntimeError("no leader within 30 s")
                await asyncio.sleep(0.05)
            leader = next(n for n in nodes if n.is_leader)
            for i in range(50):
                await leader.put(b"warm%04d" % i, b"x")
            await asyncio.sleep(0.3)
            latencies = []
            before = syncs[0]
            for i in range(writes):
                start = time.perf_counter()
                await leader.put(b"k%07d" % i, VALUE)
                latencies.append(time.perf_counter() - start)
            per_write = (syncs[0] - before) / writes

            async def writer(c: int) -> None:
                for i in range(60):
                    await leader.put(b"c%02d%05d" % (c, i), VALUE)

            start = time.perf_counter()
            cpu = time.process_time()
            before = syncs[0]
            await asyncio.gather(*(writer(c) for c in range(16)))
            rate = 16 * 60 / (time.perf_counter() - start)
            cpu_us = (time.process_time() - cpu) / (16 * 60) * 1e6
            per_write_16 = (syncs[0] - before) / (16 * 60)
        finally:
            for node in nodes:
                await node.aclose()
    latencies.sort()
    return (
        f"1 writer: p50 {latencies[writes // 2] * 1e3:.2f} ms, "
        f"p90 {latencies[int(writes * 0.9)] * 1e3:.2f} ms, "
        f"{per_write:.2f} fdatasyncs per write over the three nodes; "
        f"16 writers: {rate:,.0f} writes/s, {cpu_us:,.0f} µs of CPU and "
        f"{per_write_16:.2f} fdatasyncs per write (three nodes)"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writes", type=int, default=300)
    parser.add_argument("--phalanx-src", help="import phalanx from this src directory")
    args = parser.parse_args(argv)
    if args.phalanx_src:
        sys.path.insert(0, args.phalanx_src)
    print(asyncio.run(run(args.writes)))


if __name__ == "__main__":
    main()
