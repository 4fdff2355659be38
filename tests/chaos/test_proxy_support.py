"""Loopback servers and clients shared by the fault proxy's tests (no tests of its own).

Every wait is bounded by ``WAIT_S``; no test asserts how long anything took.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

WAIT_S = 5.0


class Upstream:
    """A TCP server on 127.0.0.1 that records what it receives and, with ``echo``, sends it
    back. ``close_after_eof`` closes a connection once its client half-closed."""

    def __init__(self, *, echo: bool = True) -> None:
        self.echo = echo
        self.received = bytearray()
        self.errors: list[BaseException] = []
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._handlers: dict[asyncio.Task[None], asyncio.StreamWriter] = {}

    @property
    def address(self) -> str:
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"{host}:{port}"

    async def start(self) -> Upstream:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers[task] = writer
        self.connections += 1
        try:
            while data := await reader.read(65536):
                self.received += data
                if self.echo:
                    writer.write(data)
                    await writer.drain()
        except ConnectionError as error:
            self.errors.append(error)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            self._handlers.pop(task, None)

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        # Closing the sockets ends the handlers (cancelling them would make asyncio log).
        handlers = list(self._handlers.items())
        for _task, writer in handlers:
            writer.transport.abort()
        async with asyncio.timeout(WAIT_S):
            await asyncio.gather(*(task for task, _writer in handlers), return_exceptions=True)


@contextlib.asynccontextmanager
async def upstream_server(*, echo: bool = True) -> AsyncIterator[Upstream]:
    server = await Upstream(echo=echo).start()
    try:
        yield server
    finally:
        await server.aclose()


@contextlib.asynccontextmanager
async def connect(
    address: tuple[str, int],
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A client connection, closed (and its close awaited) at the end."""
    async with asyncio.timeout(WAIT_S):
        reader, writer = await asyncio.open_connection(*address)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def read_to_eof(reader: asyncio.StreamReader) -> bytes:
    async with asyncio.timeout(WAIT_S):
        return await reader.read()


async def wait_for(condition: object, what: str) -> None:
    """Poll ``condition()`` until true (bounded by ``WAIT_S``)."""
    assert callable(condition)
    async with asyncio.timeout(WAIT_S):
        while not condition():  # noqa: ASYNC110 - polls plain state, bounded by WAIT_S
            await asyncio.sleep(0.005)
    assert condition(), what
