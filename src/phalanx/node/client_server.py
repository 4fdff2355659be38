"""``ClientServer``: the TCP endpoint clients talk to, in front of one ``RaftNode``.

One connection is a sequence of frames (:mod:`phalanx.node.client_protocol`). Each request
runs in its own task, at most :data:`CLIENT_INFLIGHT_MAX` per connection; responses are
written as they finish. A request that decodes but is wrong (unknown op, missing value, key
or value over the key-value limits) gets a ``BadRequest``/``TooLarge`` response and the
connection stays open. A frame that breaks the framing (bad version byte, unknown frame
type, longer than :data:`CLIENT_FRAME_BYTES_MAX`) or a payload that is not a request gets an
error response with id 0, then that connection (and only it) is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Final

from phalanx.errors import BadRequest, NotLeader, PhalanxError, Unavailable
from phalanx.net.framing import FrameDecoder, FrameError, FrameType, MalformedFrame
from phalanx.node.client_protocol import (
    CLIENT_FRAME_BYTES_MAX,
    CLIENT_INFLIGHT_MAX,
    ClientRequest,
    ClientResponse,
    decode_request,
    encode_response,
    error_body,
)

if TYPE_CHECKING:
    from phalanx.node.driver import Address, RaftNode

__all__ = ["ClientServer"]

_log = logging.getLogger(__name__)

_READ_BYTES: Final = 65536


class ClientServer:
    """Serves ``put``/``get`` requests on ``listen_addr`` against ``node``."""

    def __init__(self, node: RaftNode, listen_addr: Address) -> None:
        self._node = node
        self._listen_addr = listen_addr
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Bind and listen; bind errors raise here."""
        host, port = self._listen_addr
        self._server = await asyncio.start_server(self._serve, host, port)

    @property
    def address(self) -> Address:
        """The bound address (the real port when 0 was asked for)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("the client server is not listening")
        host, port = self._server.sockets[0].getsockname()[:2]
        return (str(host), int(port))

    async def aclose(self) -> None:
        """Stop accepting, then end every connection (requests in progress are cancelled)."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        connections = list(self._connections)
        for task in connections:
            task.cancel()
        await asyncio.gather(*connections, return_exceptions=True)
        if server is not None:
            await server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        try:
            await self._connection(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            if task is not None:
                self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = FrameDecoder(CLIENT_FRAME_BYTES_MAX)
        slots = asyncio.Semaphore(CLIENT_INFLIGHT_MAX)
        async with asyncio.TaskGroup() as tg:
            while True:
                data = await reader.read(_READ_BYTES)
                if not data:
                    return
                try:
                    frames = decoder.feed(data)
                    requests = []
                    for frame in frames:
                        if frame.type != FrameType.MESSAGE:
                            raise MalformedFrame(f"unexpected {frame.type.name} frame")
                        requests.append(decode_request(frame.payload))
                except FrameError as exc:
                    _log.debug("client connection closed: %s", exc)
                    writer.write(encode_response(ClientResponse(0, error=error_body(exc))))
                    with contextlib.suppress(ConnectionError):
                        await writer.drain()
                    writer.close()  # requests in progress finish, their answers are dropped
                    return
                for request in requests:
                    await slots.acquire()
                    tg.create_task(self._answer(request, writer, slots))

    async def _answer(
        self, request: ClientRequest, writer: asyncio.StreamWriter, slots: asyncio.Semaphore
    ) -> None:
        try:
            response = await self._execute(request)
            if not writer.is_closing():
                writer.write(encode_response(response))
                with contextlib.suppress(ConnectionError):
                    await writer.drain()
        finally:
            slots.release()

    async def _execute(self, request: ClientRequest) -> ClientResponse:
        node = self._node
        try:
            if request.op == "put":
                if request.value is None:
                    raise BadRequest("put: value is required")
                result = await node.put(request.key, request.value)
                return ClientResponse(request.id, ok=True, revision=result.revision)
            if request.op == "get":
                value = await node.get(request.key, linearizable=request.linearizable)
                return ClientResponse(request.id, ok=True, value=value)
            raise BadRequest(f"unknown op {request.op!r}; expected 'put' or 'get'")
        except NotLeader as exc:
            leader_id, address = node.leader_client_address()
            hint = f"{address[0]}:{address[1]}" if address is not None else None
            return ClientResponse(
                request.id, error=error_body(exc, leader_hint=hint, leader_id=leader_id)
            )
        except PhalanxError as exc:
            return ClientResponse(request.id, error=error_body(exc))
        except RuntimeError as exc:  # the node is not running: nothing was attempted
            return ClientResponse(request.id, error=error_body(Unavailable(str(exc))))
