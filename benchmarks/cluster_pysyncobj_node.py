"""One PySyncObj cluster member with a small TCP front, for ``bench_cluster.py``.

PySyncObj is a library, not a server: its replicated objects live inside the application's
process and have no network API for clients. To drive it with the same load generator as
Phalanx and etcd, each member runs in its own process with a TCP front that plays the part
of Phalanx's client server:

- PySyncObj's own thread (``autoTick``) runs Raft, exactly as an application would run it;
- an asyncio loop in the main thread accepts client connections. Each request is one frame
  (4-byte big-endian length, then a msgpack array ``[op, key, value]``) and gets one frame
  back (``[ok, value_or_error]``).

``put`` calls ``ReplDict.set(key, value, callback=...)``; the answer is sent when the
callback reports the command applied on this member (committed by a majority), as Phalanx
answers a put once applied on the leader. PySyncObj has no read-index: its ``get`` reads the
local dict and may be stale. A linearizable ``get`` therefore goes through the log as a
replicated no-op that returns the value (``read``), which is what an application needing
linearizable reads from PySyncObj has to do. ``status`` answers ``[true, [is_leader, leader]]``.

PySyncObj keeps its log in memory here (its default: no ``journalFile``); it never fsyncs,
even with a journal file. Run: ``python benchmarks/cluster_pysyncobj_node.py --self
127.0.0.1:P --partner 127.0.0.1:Q --partner 127.0.0.1:R --front 127.0.0.1:F [--no-batch]``.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import struct
import sys
from typing import Any

import msgspec
from pysyncobj import SyncObj, SyncObjConf, replicated
from pysyncobj.batteries import ReplDict

__all__ = ["BenchDict", "main"]

_LEN = struct.Struct(">I")
_FRAME_MAX = 4 * 1024 * 1024


class BenchDict(ReplDict):
    """``ReplDict`` plus a read that goes through the log (PySyncObj's only linearizable read)."""

    @replicated
    def read(self, key: bytes) -> bytes | None:
        return self._ReplDict__data.get(key)  # type: ignore[attr-defined]


class Front:
    def __init__(self, obj: SyncObj, store: BenchDict) -> None:
        self.obj = obj
        self.store = store
        self.loop = asyncio.get_running_loop()
        self.encoder = msgspec.msgpack.Encoder()
        self.decoder = msgspec.msgpack.Decoder()

    def _callback(self, future: asyncio.Future[Any]) -> Any:
        loop = self.loop

        def done(result: Any, error: Any) -> None:
            loop.call_soon_threadsafe(_settle, future, result, error)

        return done

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                header = await reader.readexactly(4)
                (length,) = _LEN.unpack(header)
                if length > _FRAME_MAX:
                    return
                op, key, value = self.decoder.decode(await reader.readexactly(length))
                answer = await self.execute(op, key, value)
                payload = self.encoder.encode(answer)
                writer.write(_LEN.pack(len(payload)) + payload)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def execute(self, op: str, key: bytes, value: bytes | None) -> list[Any]:
        if op == "status":
            leader = self.obj._getLeader()
            return [True, [bool(self.obj._isLeader()), None if leader is None else str(leader.id)]]
        future: asyncio.Future[Any] = self.loop.create_future()
        if op == "put":
            self.store.set(key, value, callback=self._callback(future))
        elif op == "get":
            self.store.read(key, callback=self._callback(future))
        else:
            return [False, f"unknown op {op!r}"]
        try:
            return [True, await future]
        except RuntimeError as exc:
            return [False, str(exc)]


def _settle(future: asyncio.Future[Any], result: Any, error: Any) -> None:
    if future.done():
        return
    if error:  # FAIL_REASON.SUCCESS is 0
        future.set_exception(RuntimeError(f"pysyncobj failure reason {error}"))
    else:
        future.set_result(result)


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


async def _run(args: argparse.Namespace) -> None:
    conf = SyncObjConf(appendEntriesUseBatch=not args.no_batch, dynamicMembershipChange=False)
    store = BenchDict()
    obj = SyncObj(args.self_addr, args.partner, conf=conf, consumers=[store])
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    front = Front(obj, store)
    host, port = _address(args.front)
    server = await asyncio.start_server(front.serve, host, port)
    sys.stdout.write("pysyncobj node ready\n")
    sys.stdout.flush()
    try:
        await stop.wait()
    finally:
        server.close()
        obj.destroy()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--self", dest="self_addr", required=True, help="host:port for Raft")
    parser.add_argument("--partner", action="append", required=True, help="another member")
    parser.add_argument("--front", required=True, help="host:port for clients")
    parser.add_argument(
        "--no-batch", action="store_true", help="appendEntriesUseBatch=False (send at once)"
    )
    asyncio.run(_run(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
