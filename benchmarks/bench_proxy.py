"""What the TCP fault proxy costs with no toxics, on loopback, run by hand:

    .venv/bin/python benchmarks/bench_proxy.py [--quick]

It starts ``phalanx chaos proxy serve`` as a child process with one proxy in front of a
local server, then measures the same two things directly and through the proxy:

* throughput: one connection sends ``--megabytes`` MB and waits for the server's
  acknowledgement of the last byte (best of ``--repeat`` runs);
* round trips: ``--round-trips`` sequential 64-byte echo exchanges on one connection
  (p50 and p99).

It prints a markdown table (docs/chaos-proxy.md holds the latest one); it asserts nothing.
The server and the client share this process's event loop; the proxy has its own process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SEND_CHUNK_BYTES = 256 * 1024
ECHO_BYTES = 64
START_LINES_MAX = 10


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """After a first byte ``E``, echo; after ``S``, count the bytes and send the count at EOF."""
    received = 0
    try:
        echo = await reader.readexactly(1) == b"E"
        while data := await reader.read(SEND_CHUNK_BYTES):
            received += len(data)
            if echo:
                writer.write(data)
                await writer.drain()
        writer.write(b"%d\n" % received)
        await writer.drain()
    finally:
        writer.close()
        await writer.wait_closed()


async def throughput_mb_s(address: tuple[str, int], total_bytes: int) -> float:
    block = b"x" * SEND_CHUNK_BYTES
    reader, writer = await asyncio.open_connection(*address)
    writer.write(b"S")
    try:
        start = time.perf_counter()
        for _ in range(total_bytes // SEND_CHUNK_BYTES):
            writer.write(block)
            await writer.drain()
        writer.write_eof()
        acknowledged = int(await reader.readline())
        elapsed_s = time.perf_counter() - start
    finally:
        writer.close()
        await writer.wait_closed()
    if acknowledged != total_bytes // SEND_CHUNK_BYTES * SEND_CHUNK_BYTES:
        raise RuntimeError(f"the server received {acknowledged} bytes")
    return acknowledged / elapsed_s / 1e6


async def round_trips_s(address: tuple[str, int], count: int) -> list[float]:
    message = b"p" * ECHO_BYTES
    reader, writer = await asyncio.open_connection(*address)
    writer.write(b"E")
    samples = []
    try:
        for _ in range(count):
            start = time.perf_counter()
            writer.write(message)
            await reader.readexactly(ECHO_BYTES)
            samples.append(time.perf_counter() - start)
        writer.write_eof()
        await reader.readline()
    finally:
        writer.close()
        await writer.wait_closed()
    return samples


def start_proxy(upstream: tuple[str, int], config_dir: Path) -> tuple[subprocess.Popen[str], str]:
    config = config_dir / "proxies.json"
    host, port = upstream
    proxies = [{"name": "bench", "listen": "127.0.0.1:0", "upstream": f"{host}:{port}"}]
    config.write_text(json.dumps(proxies))
    argv = [sys.executable, "-m", "phalanx.cli.main", "chaos", "proxy", "serve"]
    argv += ["--listen", "127.0.0.1:0", "--config", str(config)]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    listen = ""
    for _ in range(START_LINES_MAX):
        line = process.stdout.readline().strip()
        if line.startswith("proxy bench listening on "):
            listen = line.rsplit(" ", 1)[1]
        if line.startswith("admin listening on ") or not line:
            break
    if not listen:
        process.kill()
        process.wait()
        raise RuntimeError("the proxy did not start")
    return process, listen


async def measure(address: tuple[str, int], args: argparse.Namespace) -> tuple[float, list[float]]:
    total_bytes = args.megabytes * 1_000_000
    await throughput_mb_s(address, SEND_CHUNK_BYTES * 8)  # warm up
    best = max([await throughput_mb_s(address, total_bytes) for _ in range(args.repeat)])
    return best, await round_trips_s(address, args.round_trips)


async def main(args: argparse.Namespace) -> None:
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    upstream = server.sockets[0].getsockname()[:2]
    with tempfile.TemporaryDirectory() as config_dir:
        process, listen = start_proxy(upstream, Path(config_dir))
        try:
            host, port = listen.rsplit(":", 1)
            direct = await measure(upstream, args)
            proxied = await measure((host, int(port)), args)
        finally:
            process.terminate()
            process.wait(timeout=10)
    server.close()
    await server.wait_closed()

    def micros(samples: list[float], fraction: float) -> float:
        return percentile(samples, fraction) * 1e6

    rows = [("direct", direct), ("through the proxy", proxied)]
    print(f"{args.megabytes} MB per transfer, best of {args.repeat}; ", end="")
    print(f"{args.round_trips} round trips of {ECHO_BYTES} bytes\n")
    print("| path | throughput (MB/s) | round trip p50 (µs) | round trip p99 (µs) |")
    print("|---|---:|---:|---:|")
    for name, (rate, samples) in rows:
        print(
            f"| {name} | {rate:,.0f} | {micros(samples, 0.5):.0f} | {micros(samples, 0.99):.0f} |"
        )
    added_p50 = micros(proxied[1], 0.5) - micros(direct[1], 0.5)
    added_p99 = micros(proxied[1], 0.99) - micros(direct[1], 0.99)
    print(f"| added by the proxy | | +{added_p50:.0f} | +{added_p99:.0f} |")


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="Smaller runs: rough figures.")
    parser.add_argument("--megabytes", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--round-trips", type=int, default=5000)
    args = parser.parse_args()
    if args.quick:
        args.megabytes, args.repeat, args.round_trips = 20, 1, 500
    return args


if __name__ == "__main__":
    asyncio.run(main(parse()))
