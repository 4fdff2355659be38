"""One client connection to one node: pipelined requests matched to responses by id."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import ssl as ssl_module
from ssl import SSLContext
from typing import Final

import msgspec

from phalanx.errors import Indeterminate, Timeout, Unavailable
from phalanx.net.framing import Frame, FrameDecoder, FrameError, FrameType, MalformedFrame
from phalanx.node.client_protocol import (
    CLIENT_FRAME_BYTES_MAX,
    ClientRequest,
    ClientResponse,
    decode_response,
    encode_request,
)

__all__ = ["Connection"]

Address = tuple[str, int]
_READ_BYTES: Final = 65536
#: Responses of one stream (a watch) buffered for a consumer that has not read them yet.
STREAM_QUEUE_MAX: Final = 1024


class Connection:
    """A TCP connection to ``address``; :meth:`request` sends one request, awaits its answer."""

    def __init__(self, address: Address, *, ssl: SSLContext | None = None) -> None:
        self.address = address
        self._ssl = ssl
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._pending: dict[int, asyncio.Future[ClientResponse]] = {}
        self._streams: dict[int, asyncio.Queue[ClientResponse | BaseException]] = {}
        self._ids = itertools.count(1)
        self._receiver: asyncio.Task[None] | None = None
        self._lost: BaseException | None = None

    @property
    def usable(self) -> bool:
        return self._writer is not None and self._lost is None and not self._writer.is_closing()

    async def connect(self, timeout_s: float) -> None:
        """Open the connection. Any failure is ``Unavailable``: nothing was sent."""
        host, port = self.address
        try:
            async with asyncio.timeout(timeout_s):
                self._reader, self._writer = await asyncio.open_connection(
                    host, port, ssl=self._ssl
                )
        except (OSError, TimeoutError, ssl_module.SSLError) as exc:
            raise Unavailable(f"cannot connect to {host}:{port}: {exc or 'timed out'}") from exc
        self._receiver = asyncio.create_task(self._receive(self._reader))

    async def request(self, request: ClientRequest, timeout_s: float) -> ClientResponse:
        """Send ``request`` (its ``id`` is replaced) and wait for its response.

        Raises ``Unavailable`` when the connection was already lost before the request was
        written (nothing was sent), ``Indeterminate`` when it is lost after, and ``Timeout``
        when no response comes within ``timeout_s``.
        """
        writer = self._writable()
        request_id = next(self._ids)
        frame = encode_request(msgspec.structs.replace(request, id=request_id))
        future: asyncio.Future[ClientResponse] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            writer.write(frame)
            try:
                async with asyncio.timeout(timeout_s):
                    await writer.drain()
                    return await future
            except TimeoutError:
                raise Timeout(
                    f"no answer from {self._where()} within {timeout_s:.3g} s; "
                    "the request's outcome is unknown"
                ) from None
            except (ConnectionError, OSError) as exc:
                raise Indeterminate(
                    f"connection to {self._where()} lost after the request was sent: {exc}"
                ) from exc
        finally:
            self._pending.pop(request_id, None)

    def open_stream(
        self, request: ClientRequest
    ) -> tuple[int, asyncio.Queue[ClientResponse | BaseException]]:
        """Send a streaming request (a watch); its responses arrive on the returned queue,
        and a lost connection puts the error there. ``Unavailable`` if already lost."""
        writer = self._writable()
        request_id = next(self._ids)
        queue: asyncio.Queue[ClientResponse | BaseException] = asyncio.Queue()
        self._streams[request_id] = queue
        writer.write(encode_request(msgspec.structs.replace(request, id=request_id)))
        return request_id, queue

    def close_stream(self, request_id: int) -> None:
        """Stop routing a stream's responses and ask the node to end it."""
        if self._streams.pop(request_id, None) is not None and self.usable:
            writer = self._writable()
            writer.write(
                encode_request(ClientRequest(next(self._ids), "cancel", watch_id=request_id))
            )

    def _route(
        self,
        request_id: int,
        stream: asyncio.Queue[ClientResponse | BaseException],
        response: ClientResponse,
    ) -> None:
        if stream.qsize() < STREAM_QUEUE_MAX:
            stream.put_nowait(response)
            return
        # The consumer fell behind: end the stream rather than buffer without bound; a
        # watch resumes from the last revision it saw.
        self.close_stream(request_id)
        stream.put_nowait(
            Unavailable(f"stream {request_id} fell {STREAM_QUEUE_MAX} responses behind")
        )

    def _writable(self) -> asyncio.StreamWriter:
        writer = self._writer
        if writer is None or not self.usable:
            raise Unavailable(f"connection to {self._where()} is closed")
        return writer

    async def _receive(self, reader: asyncio.StreamReader) -> None:
        decoder = FrameDecoder(CLIENT_FRAME_BYTES_MAX)
        error: BaseException
        try:
            while True:
                data = await reader.read(_READ_BYTES)
                if not data:
                    error = ConnectionResetError("closed by the node")
                    break
                for frame in decoder.feed(data):
                    response = _response_of(frame)
                    future = self._pending.get(response.id)
                    stream = self._streams.get(response.id)
                    if future is not None and not future.done():
                        future.set_result(response)
                    elif stream is not None:
                        self._route(response.id, stream, response)
                    elif response.id == 0 and response.error is not None:
                        error = ConnectionResetError(
                            f"the node refused the stream: {response.error.message}"
                        )
                        break
                else:
                    continue
                break
        except (OSError, FrameError) as exc:
            error = exc
        self._fail(error)

    def _fail(self, error: BaseException) -> None:
        self._lost = error
        lost = ConnectionResetError(f"connection to {self._where()} lost: {error}")
        for future in self._pending.values():
            if not future.done():
                future.set_exception(lost)
        for stream in self._streams.values():
            stream.put_nowait(lost)
        self._streams.clear()
        if self._writer is not None:
            self._writer.close()

    async def aclose(self) -> None:
        receiver, self._receiver = self._receiver, None
        if receiver is not None:
            receiver.cancel()
            await asyncio.gather(receiver, return_exceptions=True)
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()
        self._fail(ConnectionAbortedError("closed by the client"))

    def _where(self) -> str:
        return f"{self.address[0]}:{self.address[1]}"


def _response_of(frame: Frame) -> ClientResponse:
    if frame.type != FrameType.MESSAGE:
        raise MalformedFrame(f"unexpected {frame.type.name} frame")
    return decode_response(frame.payload)
