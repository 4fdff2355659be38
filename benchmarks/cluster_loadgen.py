"""The load generator of ``bench_cluster.py``: one worker process, closed-loop clients.

One design for every system. A worker process runs ``clients`` logical clients on one
asyncio loop; each client owns one connection to the system's leader and has one request
in flight at a time (closed loop: send, wait for the answer, send the next). The parent
starts several workers, splitting the clients between them, so the generator can use more
than one core. Only the last step differs per system, each through the thinnest client
available:

- ``phalanx``: ``phalanx.client.AsyncClient`` (the product's own client, one per logical
  client, each with its own connection);
- ``etcd``: HTTP/1.1 keep-alive requests to the v3 JSON gateway (``/v3/kv/put``,
  ``/v3/kv/range``; keys and values base64) written and parsed by hand on asyncio streams,
  which costs the generator far less CPU than a general-purpose HTTP client;
- ``pysyncobj``: length-prefixed msgpack frames to the member's TCP front
  (``cluster_pysyncobj_node.py``).

Protocol with the parent: the configuration arrives as one JSON line on stdin; the worker
opens its connections and prints ``ready``; the parent answers ``go T0`` (a
``time.monotonic()`` instant, the same clock in every process on Linux); clients run from T0
to T0 + warmup + duration and stop issuing requests then (every loop is bounded by that
deadline and by ``ops_max`` per client). An operation counts when it completes inside the
window [T0 + warmup, T0 + warmup + duration]. The worker prints one JSON line: latencies of
the counted operations (microseconds), errors, misses, and its CPU time inside the window.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import struct
import sys
import time
from typing import Any, Protocol

__all__ = ["main"]

VALUE_BYTES = 256
KEY_FORMAT = b"%08d"  # 8-byte keys
_LEN = struct.Struct(">I")
#: Pause after a failed request, so that a failing system is not hammered in a tight loop.
ERROR_PAUSE_S = 0.01


class Conn(Protocol):
    async def open(self) -> None: ...
    async def put(self, key: bytes, value: bytes) -> None: ...
    async def get(self, key: bytes) -> bytes | None: ...
    async def close(self) -> None: ...


class PhalanxConn:
    def __init__(self, endpoints: list[str]) -> None:
        from phalanx.client import AsyncClient

        self.client = AsyncClient(endpoints)

    async def open(self) -> None:
        # Opens the connection to the first endpoint (the leader, listed first by the parent).
        await self.client.get(b"warmup00", linearizable=False)

    async def put(self, key: bytes, value: bytes) -> None:
        await self.client.put(key, value)

    async def get(self, key: bytes) -> bytes | None:
        return await self.client.get(key)

    async def close(self) -> None:
        await self.client.aclose()


class HttpError(Exception):
    pass


class EtcdConn:
    """One keep-alive HTTP/1.1 connection to etcd's JSON gateway."""

    def __init__(self, endpoint: str) -> None:
        host, _, port = endpoint.rpartition(":")
        self.host, self.port = host, int(port)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.header = b"Host: %s:%d\r\nContent-Type: application/json\r\n" % (
            host.encode(),
            self.port,
        )

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def post(self, path: bytes, body: dict[str, str]) -> Any:
        reader, writer = self.reader, self.writer
        if reader is None or writer is None:
            await self.open()
            reader, writer = self.reader, self.writer
            assert reader is not None
            assert writer is not None
        data = json.dumps(body).encode()
        writer.write(
            b"POST %s HTTP/1.1\r\n%sContent-Length: %d\r\n\r\n%s"
            % (path, self.header, len(data), data)
        )
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            status = int(lines[0].split(b" ", 2)[1])
            length = -1
            chunked = False
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"transfer-encoding" and b"chunked" in value.lower():
                    chunked = True
            if chunked:
                payload = b""
                while True:
                    size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                    if size == 0:
                        await reader.readuntil(b"\r\n")
                        break
                    payload += await reader.readexactly(size)
                    await reader.readexactly(2)
            elif length >= 0:
                payload = await reader.readexactly(length)
            else:
                raise HttpError("response without a length")
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            await self.close()
            raise HttpError(f"connection lost: {exc}") from exc
        if status != 200:
            raise HttpError(f"HTTP {status}: {payload[:200]!r}")
        return json.loads(payload)

    async def put(self, key: bytes, value: bytes) -> None:
        await self.post(
            b"/v3/kv/put",
            {"key": base64.b64encode(key).decode(), "value": base64.b64encode(value).decode()},
        )

    async def get(self, key: bytes) -> bytes | None:
        answer = await self.post(b"/v3/kv/range", {"key": base64.b64encode(key).decode()})
        kvs = answer.get("kvs")
        return base64.b64decode(kvs[0]["value"]) if kvs else None

    async def close(self) -> None:
        writer, self.writer, self.reader = self.writer, None, None
        if writer is not None:
            writer.close()


class PySyncObjConn:
    """One connection to a PySyncObj member's front (``cluster_pysyncobj_node.py``)."""

    def __init__(self, endpoint: str) -> None:
        import msgspec

        host, _, port = endpoint.rpartition(":")
        self.host, self.port = host, int(port)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.encoder = msgspec.msgpack.Encoder()
        self.decoder = msgspec.msgpack.Decoder()

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def call(self, op: str, key: bytes, value: bytes | None) -> Any:
        if self.reader is None or self.writer is None:
            await self.open()
        reader, writer = self.reader, self.writer
        assert reader is not None
        assert writer is not None
        payload = self.encoder.encode([op, key, value])
        writer.write(_LEN.pack(len(payload)) + payload)
        try:
            (length,) = _LEN.unpack(await reader.readexactly(4))
            ok, result = self.decoder.decode(await reader.readexactly(length))
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            await self.close()
            raise ConnectionError(f"connection lost: {exc}") from exc
        if not ok:
            raise RuntimeError(result)
        return result

    async def put(self, key: bytes, value: bytes) -> None:
        await self.call("put", key, value)

    async def get(self, key: bytes) -> bytes | None:
        result: bytes | None = await self.call("get", key, None)
        return result

    async def close(self) -> None:
        writer, self.writer, self.reader = self.writer, None, None
        if writer is not None:
            writer.close()


def make_conn(system: str, endpoints: list[str]) -> Conn:
    if system == "phalanx":
        return PhalanxConn(endpoints)
    if system == "etcd":
        return EtcdConn(endpoints[0])
    if system == "pysyncobj":
        return PySyncObjConn(endpoints[0])
    raise ValueError(f"unknown system {system!r}")


class Stats:
    def __init__(self) -> None:
        self.latencies_us: list[int] = []
        self.errors = 0
        self.misses = 0
        self.error_sample = ""


async def client_loop(
    conn: Conn,
    op: str,
    rng: random.Random,
    keyspace: int,
    value: bytes,
    window: tuple[float, float, float],
    ops_max: int,
    stats: Stats,
) -> None:
    t0, w_start, t_end = window
    now = time.monotonic
    await asyncio.sleep(max(0.0, t0 - now()))
    done_ops = 0
    while done_ops < ops_max:
        start = now()
        if start >= t_end:
            break
        key = KEY_FORMAT % rng.randrange(keyspace)
        try:
            if op == "put":
                await conn.put(key, value)
            elif await conn.get(key) is None:
                stats.misses += 1
        except Exception as exc:
            if w_start <= now() <= t_end:
                stats.errors += 1
                stats.error_sample = stats.error_sample or f"{type(exc).__name__}: {exc}"[:200]
            await asyncio.sleep(ERROR_PAUSE_S)
            continue
        finished = now()
        done_ops += 1
        if w_start <= finished <= t_end:
            stats.latencies_us.append(int((finished - start) * 1e6))


async def cpu_meter(w_start: float, t_end: float, into: list[float]) -> None:
    await asyncio.sleep(max(0.0, w_start - time.monotonic()))
    begin = time.process_time()
    await asyncio.sleep(max(0.0, t_end - time.monotonic()))
    into.append(time.process_time() - begin)


async def run(config: dict[str, Any]) -> dict[str, Any]:
    system = config["system"]
    clients = int(config["clients"])
    conns = [make_conn(system, config["endpoints"]) for _ in range(clients)]
    try:
        await asyncio.gather(*(c.open() for c in conns))
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        line = await asyncio.to_thread(sys.stdin.readline)
        word, _, t0_text = line.strip().partition(" ")
        if word != "go":
            raise SystemExit(f"expected 'go T0', got {line!r}")
        t0 = float(t0_text)
        w_start = t0 + float(config["warmup_s"])
        t_end = w_start + float(config["duration_s"])
        stats = Stats()
        cpu: list[float] = []
        seed = int(config.get("seed", 0))
        value = random.Random(seed).randbytes(VALUE_BYTES)
        per_client = max(1, int(config["ops_max"]) // max(1, clients))
        await asyncio.gather(
            cpu_meter(w_start, t_end, cpu),
            *(
                client_loop(
                    conn,
                    config["op"],
                    random.Random(seed * 100_003 + i),
                    int(config["keyspace"]),
                    value,
                    (t0, w_start, t_end),
                    per_client,
                    stats,
                )
                for i, conn in enumerate(conns)
            ),
        )
    finally:
        await asyncio.gather(*(c.close() for c in conns), return_exceptions=True)
    return {
        "latencies_us": stats.latencies_us,
        "errors": stats.errors,
        "misses": stats.misses,
        "error_sample": stats.error_sample,
        "cpu_s": cpu[0] if cpu else 0.0,
        "pid": os.getpid(),
    }


def main() -> None:
    config = json.loads(sys.stdin.readline())
    result = asyncio.run(run(config))
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
