"""One client connection to one node: pipelined requests matched to responses by id."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from typing import Final

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


class Connection:
    """A TCP connection to ``address``; :meth:`request` sends one request, awaits its answer."""

    def __init__(self, address: Address) -> None:
        self.address = address
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._pending: dict[int, asyncio.Future[ClientResponse]] = {}
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
                self._reader, self._writer = await asyncio.open_connection(host, port)
        except (OSError, TimeoutError) as exc:
            raise Unavailable(f"cannot connect to {host}:{port}: {exc or 'timed out'}") from exc
        self._receiver = asyncio.create_task(self._receive(self._reader))

    async def request(
        self, op: str, key: bytes, value: bytes | None, linearizable: bool, timeout_s: float
    ) -> ClientResponse:
        """Send one request and wait for its response.

        Raises ``Unavailable`` when the connection was already lost before the request was
        written (nothing was sent), ``Indeterminate`` when it is lost after, and ``Timeout``
        when no response comes within ``timeout_s``.
        """
        writer = self._writer
        if writer is None or not self.usable:
            raise Unavailable(f"connection to {self._where()} is closed")
        request_id = next(self._ids)
        frame = encode_request(ClientRequest(request_id, op, key, value, linearizable))
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
                    if future is not None and not future.done():
                        future.set_result(response)
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
        for future in self._pending.values():
            if not future.done():
                future.set_exception(
                    ConnectionResetError(f"connection to {self._where()} lost: {error}")
                )
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
