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
import time
from ssl import SSLContext
from typing import TYPE_CHECKING, Final

from phalanx.errors import BadRequest, NotLeader, Outcome, PhalanxError, Unavailable
from phalanx.kv.commands import Range
from phalanx.kv.errors import TooManyWatchers
from phalanx.net.framing import FrameDecoder, FrameError, FrameType, MalformedFrame
from phalanx.node.client_protocol import (
    CLIENT_FRAME_BYTES_MAX,
    CLIENT_INFLIGHT_MAX,
    ERROR_TYPES,
    OPS,
    ClientRequest,
    ClientResponse,
    MemberChange,
    decode_request,
    encode_response,
    error_body,
)
from phalanx.node.cluster_spec import parse_address

if TYPE_CHECKING:
    from phalanx.node.driver import Address, RaftNode

__all__ = ["ClientServer"]

_log = logging.getLogger(__name__)

_READ_BYTES: Final = 65536
#: A TLS handshake that takes longer closes the connection.
TLS_HANDSHAKE_TIMEOUT_S: Final = 5.0
#: Watches one connection may hold open at once.
WATCHES_PER_CONNECTION_MAX: Final = 256
#: Events sent in one watch response (a revision's events are never split).
WATCH_BATCH_EVENTS_MAX: Final = 1000
#: How long an idle watch sleeps before checking that its connection and node still live.
WATCH_IDLE_S: Final = 1.0


class ClientServer:
    """Serves the client protocol on ``listen_addr`` against ``node``."""

    def __init__(
        self, node: RaftNode, listen_addr: Address, *, ssl: SSLContext | None = None
    ) -> None:
        self._node = node
        self._listen_addr = listen_addr
        self._ssl = ssl
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Bind and listen; bind errors raise here."""
        host, port = self._listen_addr
        self._server = await asyncio.start_server(
            self._serve,
            host,
            port,
            ssl=self._ssl,
            ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT_S if self._ssl else None,
        )

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
        watches: dict[int, asyncio.Task[None]] = {}
        async with asyncio.TaskGroup() as tg:
            try:
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
                        if request.op == "watch":
                            self._start_watch(tg, request, writer, watches)
                        elif request.op == "cancel":
                            task = watches.pop(request.watch_id, None)
                            if task is not None:
                                task.cancel()
                            _send(writer, ClientResponse(request.id, ok=True))
                        else:
                            await slots.acquire()
                            tg.create_task(self._answer(request, writer, slots))
            finally:
                for task in watches.values():
                    task.cancel()

    def _start_watch(
        self,
        tg: asyncio.TaskGroup,
        request: ClientRequest,
        writer: asyncio.StreamWriter,
        watches: dict[int, asyncio.Task[None]],
    ) -> None:
        for done in [rid for rid, task in watches.items() if task.done()]:
            del watches[done]
        if request.id in watches:
            _send(writer, _failure(request.id, BadRequest(f"request id {request.id} in use")))
        elif len(watches) >= WATCHES_PER_CONNECTION_MAX:
            _send(
                writer,
                _failure(
                    request.id,
                    TooManyWatchers(
                        f"watches_per_connection_max {WATCHES_PER_CONNECTION_MAX} reached"
                    ),
                ),
            )
        elif request.range is None:
            _send(writer, _failure(request.id, BadRequest("watch: range is required")))
        else:
            watches[request.id] = tg.create_task(self._watch(request.id, request.range, writer))

    async def _watch(self, request_id: int, op: Range, writer: asyncio.StreamWriter) -> None:
        node = self._node
        try:
            watch_id = node.watches.watch(op.key, op.range_end, op.revision)
        except PhalanxError as exc:
            _send(writer, _failure(request_id, exc))
            return
        try:
            start = node.watches.next_revision(watch_id)
            _send(
                writer,
                ClientResponse(request_id, ok=True, watch_id=watch_id, start_revision=start),
            )
            while not writer.is_closing():
                applied = node.store.applied_index
                events = node.watches.poll(watch_id, WATCH_BATCH_EVENTS_MAX)
                if events:
                    _send(
                        writer,
                        ClientResponse(
                            request_id, ok=True, watch_id=watch_id, events=tuple(events)
                        ),
                    )
                    await writer.drain()  # a slow reader slows only its own watch
                elif not await node.wait_applied(applied, WATCH_IDLE_S) and not node.started:
                    raise Unavailable("the node is stopping")
        except PhalanxError as exc:
            _send(writer, _failure(request_id, exc))
        except ConnectionError:
            pass
        finally:
            node.watches.cancel(watch_id)

    async def _answer(
        self, request: ClientRequest, writer: asyncio.StreamWriter, slots: asyncio.Semaphore
    ) -> None:
        try:
            began = time.perf_counter()
            response = await self._execute(request)
            outcome = "ok" if response.ok else _outcome(response)
            self._node.observer.on_request(request.op, time.perf_counter() - began, outcome)
            if not writer.is_closing():
                writer.write(encode_response(response))
                with contextlib.suppress(ConnectionError):
                    await writer.drain()
        finally:
            slots.release()

    async def _execute(self, request: ClientRequest) -> ClientResponse:
        node = self._node
        try:
            return await self._dispatch(request)
        except NotLeader as exc:
            leader_id, address = node.leader_client_address()
            hint = f"{address[0]}:{address[1]}" if address is not None else None
            return ClientResponse(
                request.id, error=error_body(exc, leader_hint=hint, leader_id=leader_id)
            )
        except PhalanxError as exc:
            return _failure(request.id, exc)
        except RuntimeError as exc:  # the node is not running: nothing was attempted
            return _failure(request.id, Unavailable(str(exc)))

    async def _dispatch(self, request: ClientRequest) -> ClientResponse:
        node = self._node
        if request.op == "propose":
            if request.command is None:
                raise BadRequest("propose: command is required")
            result = await node.propose(
                request.command,
                client_id=request.client_id,
                seq=request.seq,
                acked_seq=request.acked_seq,
            )
            return ClientResponse(request.id, ok=True, result=result)
        if request.op == "range":
            if request.range is None:
                raise BadRequest("range: range is required")
            read = await node.read(request.range, linearizable=request.linearizable)
            return ClientResponse(request.id, ok=True, result=read, stale=not request.linearizable)
        if request.op == "status":
            return ClientResponse(request.id, ok=True, status=node.describe())
        if request.op == "member":
            await self._member(request.member)
            return ClientResponse(request.id, ok=True, status=node.describe())
        if request.op == "transfer":
            await node.transfer_leadership(request.node_id)
            return ClientResponse(request.id, ok=True, status=node.describe())
        raise BadRequest(f"unknown op {request.op!r}; expected one of {', '.join(OPS)}")

    async def _member(self, change: MemberChange | None) -> None:
        node = self._node
        if change is None:
            raise BadRequest("member: member is required")
        if change.node_id < 1:
            raise BadRequest(f"member: node_id must be >= 1, got {change.node_id}")
        if change.action in ("add", "add_voter"):
            try:
                peer, client = parse_address(change.peer), parse_address(change.client)
            except ValueError as exc:
                raise BadRequest(f"member: {exc}") from None
            await node.add_member(change.node_id, peer, client, learner=change.action == "add")
        elif change.action == "promote":
            await node.promote_member(change.node_id)
        elif change.action == "remove":
            await node.remove_member(change.node_id)
        else:
            raise BadRequest(
                f"member: unknown action {change.action!r}; expected add, add_voter, "
                "promote or remove"
            )


def _send(writer: asyncio.StreamWriter, response: ClientResponse) -> None:
    if not writer.is_closing():
        writer.write(encode_response(response))


def _failure(request_id: int, error: BaseException) -> ClientResponse:
    return ClientResponse(request_id, error=error_body(error))


def _outcome(response: ClientResponse) -> str:
    if response.error is None:
        return "unknown"
    cls = ERROR_TYPES.get(response.error.type)
    if cls is None:
        return "unknown"
    return "fail" if cls.outcome == Outcome.FAILED else "unknown"
