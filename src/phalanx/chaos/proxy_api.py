"""The fault proxy's HTTP admin API (a Toxiproxy-compatible subset) and its async client.

:class:`ProxyApiApp` is a plain ASGI app over a :class:`~phalanx.chaos.proxy.ProxyServer`;
:class:`ProxyApiServer` serves it with uvicorn on the running event loop (default
``127.0.0.1:8474``, Toxiproxy's port); :class:`ProxyAdmin` is the client the chaos runner
and the command line use. Every body is JSON, (de)serialised and validated with msgspec.

=======  ==================================  ===============================================
method   path                                 answer
=======  ==================================  ===============================================
GET      /version                             ``{"version": ...}``
GET      /proxies                             every proxy, an object keyed by name
POST     /proxies                             create one: 201 and the proxy
POST     /populate                            create or replace a list: 201, ``{"proxies"}``
POST     /reset                               enable all, remove every toxic: 204
GET      /proxies/{name}                      the proxy
POST     /proxies/{name}                      change ``enabled`` / ``listen`` / ``upstream``
DELETE   /proxies/{name}                      204
GET      /proxies/{name}/statistics           its counters (a Phalanx extension)
GET      /proxies/{name}/toxics               its toxics, in order
POST     /proxies/{name}/toxics               add one: 200 and the toxic with its defaults
GET      /proxies/{name}/toxics/{toxic}       the toxic
POST     /proxies/{name}/toxics/{toxic}       change its attributes (merged) or toxicity
DELETE   /proxies/{name}/toxics/{toxic}       204
=======  ==================================  ===============================================

``PATCH`` is accepted wherever ``POST`` updates, as newer Toxiproxy versions do. Errors are
``{"error": "<message naming the field>", "status": <code>}``: 400 for an invalid body or
value, 404 for an unknown path, proxy or toxic, 405 for a method a path does not answer,
409 for a duplicate name, a full server or an address that cannot be bound, 413 for a body
over ``ADMIN_BODY_BYTES_MAX``. :class:`ProxyAdmin` raises the matching
:mod:`phalanx.errors` class (:class:`~phalanx.errors.BadRequest`,
:class:`~phalanx.chaos.proxy.ProxyNotFound`, :class:`~phalanx.errors.Conflict`,
:class:`~phalanx.errors.TooLarge`), and :class:`~phalanx.errors.Unavailable` when the API
cannot be reached.

Anyone who reaches the API can cut and degrade every proxied link, so
:class:`ProxyApiServer` refuses an address that is not loopback unless ``allow_remote``.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from types import TracebackType
from typing import Any, Final, TypeVar

import httpx
import msgspec

from phalanx import __version__
from phalanx.chaos.proxy import (
    ProxyConfig,
    ProxyNotFound,
    ProxyServer,
    ProxyState,
    ProxyStatistics,
    ProxyUpdate,
    format_address,
    is_loopback,
)
from phalanx.chaos.toxics import ToxicSpec, ToxicUpdate
from phalanx.errors import BadRequest, Conflict, PhalanxError, Rejected, TooLarge, Unavailable
from phalanx.health.server import LoopServer, bind_listener

__all__ = [
    "ADMIN_BODY_BYTES_MAX",
    "ADMIN_CONNECTIONS_MAX",
    "ADMIN_REQUEST_TIMEOUT_S",
    "DEFAULT_ADMIN_HOST",
    "DEFAULT_ADMIN_PORT",
    "DEFAULT_ADMIN_URL",
    "ProxyAdmin",
    "ProxyApiApp",
    "ProxyApiServer",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
T = TypeVar("T")

DEFAULT_ADMIN_HOST: Final = "127.0.0.1"
DEFAULT_ADMIN_PORT: Final = 8474
DEFAULT_ADMIN_URL: Final = f"http://{DEFAULT_ADMIN_HOST}:{DEFAULT_ADMIN_PORT}"
#: The largest request body the API reads (a populate list of every proxy fits easily).
ADMIN_BODY_BYTES_MAX: Final = 1024 * 1024
#: Admin connections served at once; uvicorn answers more with 503.
ADMIN_CONNECTIONS_MAX: Final = 64
#: How long closing the API waits for requests in progress.
ADMIN_SHUTDOWN_S_MAX: Final = 2
#: The default time :class:`ProxyAdmin` gives each request.
ADMIN_REQUEST_TIMEOUT_S: Final = 10.0

_ENCODER: Final = msgspec.json.Encoder()
_STATUS: Final[dict[type[PhalanxError], int]] = {
    BadRequest: 400,
    ProxyNotFound: 404,
    Conflict: 409,
    TooLarge: 413,
}


class _HttpError(Exception):
    def __init__(self, status: int, message: str, allow: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.allow = allow


def _status_of(error: Rejected) -> int:
    for kind, status in _STATUS.items():
        if isinstance(error, kind):
            return status
    return 400


def _decode(body: bytes, kind: type[T]) -> T:
    try:
        return msgspec.json.decode(body or b"{}", type=kind)
    except msgspec.DecodeError as error:  # ValidationError too
        raise _HttpError(400, f"invalid body: {error}") from None


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:  # bounded by ADMIN_BODY_BYTES_MAX
        message = await receive()
        if message["type"] != "http.request":
            raise _HttpError(400, "the client went away")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > ADMIN_BODY_BYTES_MAX:
            raise _HttpError(413, f"body over {ADMIN_BODY_BYTES_MAX} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _respond(send: Send, status: int, body: bytes, allow: str = "") -> None:
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
    ]
    if allow:
        headers.append((b"allow", allow.encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class ProxyApiApp:
    """The admin API of ``proxies`` as an ASGI app (see the module for the routes)."""

    def __init__(self, proxies: ProxyServer) -> None:
        self.proxies = proxies

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        try:
            status, payload = await self._route(scope, receive)
        except _HttpError as error:
            body = _ENCODER.encode({"error": error.message, "status": error.status})
            await _respond(send, error.status, body, error.allow)
            return
        except Rejected as error:
            status = _status_of(error)
            await _respond(send, status, _ENCODER.encode({"error": str(error), "status": status}))
            return
        await _respond(send, status, b"" if payload is None else _ENCODER.encode(payload))

    async def _route(  # noqa: PLR0911 - one return per route reads best
        self, scope: Scope, receive: Receive
    ) -> tuple[int, object]:
        method: str = scope.get("method", "GET")
        parts = [p for p in scope.get("path", "/").split("/") if p]
        match parts:
            case ["version"]:
                _allow(method, "GET")
                return 200, {"version": __version__}
            case ["reset"]:
                _allow(method, "POST")
                await self.proxies.reset()
                return 204, None
            case ["populate"]:
                _allow(method, "POST")
                configs = _decode(await _read_body(receive), list[ProxyConfig])
                created = await self.proxies.populate(configs)
                return 201, {"proxies": [p.state() for p in created]}
            case ["proxies"]:
                return await self._proxies(method, receive)
            case ["proxies", name]:
                return await self._proxy(method, name, receive)
            case ["proxies", name, "statistics"]:
                _allow(method, "GET")
                return 200, self.proxies.get(name).statistics()
            case ["proxies", name, "toxics"]:
                return await self._toxics(method, name, receive)
            case ["proxies", name, "toxics", toxic]:
                return await self._toxic(method, name, toxic, receive)
            case _:
                raise _HttpError(404, f"no such path: {scope.get('path')!r}")

    async def _proxies(self, method: str, receive: Receive) -> tuple[int, object]:
        _allow(method, "GET", "POST")
        if method == "GET":
            return 200, {name: p.state() for name, p in self.proxies.proxies().items()}
        config = _decode(await _read_body(receive), ProxyConfig)
        return 201, (await self.proxies.create(config)).state()

    async def _proxy(self, method: str, name: str, receive: Receive) -> tuple[int, object]:
        _allow(method, "GET", "POST", "PATCH", "DELETE")
        if method == "GET":
            return 200, self.proxies.get(name).state()
        if method == "DELETE":
            await self.proxies.delete(name)
            return 204, None
        update = _decode(await _read_body(receive), ProxyUpdate)
        return 200, (await self.proxies.update(name, update)).state()

    async def _toxics(self, method: str, name: str, receive: Receive) -> tuple[int, object]:
        _allow(method, "GET", "POST")
        proxy = self.proxies.get(name)
        if method == "GET":
            return 200, proxy.toxics()
        spec = _decode(await _read_body(receive), ToxicSpec)
        return 200, proxy.add_toxic(spec)

    async def _toxic(
        self, method: str, name: str, toxic: str, receive: Receive
    ) -> tuple[int, object]:
        _allow(method, "GET", "POST", "PATCH", "DELETE")
        proxy = self.proxies.get(name)
        if method == "GET":
            return 200, proxy.toxic(toxic)
        if method == "DELETE":
            proxy.remove_toxic(toxic)
            return 204, None
        update = _decode(await _read_body(receive), ToxicUpdate)
        return 200, proxy.update_toxic(toxic, update)


def _allow(method: str, *methods: str) -> None:
    if method not in methods:
        allowed = ", ".join(methods)
        raise _HttpError(405, f"method {method} not allowed here (allowed: {allowed})", allowed)


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:  # ends with the server's shutdown message
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


# -- the server -----------------------------------------------------------------------------


class ProxyApiServer:
    """Serves :class:`ProxyApiApp` for ``proxies`` on ``host:port`` on the running loop.

    :meth:`start` binds (``Conflict`` when it cannot; port 0 picks a free one, read
    :attr:`address` or :attr:`url`) and returns once requests are served; :meth:`aclose`
    stops serving (it leaves the proxies to their owner). Also an async context manager.
    A non-loopback ``host`` raises ``BadRequest`` unless ``allow_remote``.
    """

    def __init__(
        self,
        proxies: ProxyServer,
        host: str = DEFAULT_ADMIN_HOST,
        port: int = DEFAULT_ADMIN_PORT,
        *,
        allow_remote: bool = False,
    ) -> None:
        if not allow_remote and not is_loopback(host):
            raise BadRequest(
                f"listen: {host!r} is not a loopback address; anyone reaching the API can "
                "cut every proxied link (allow it explicitly with allow_remote)"
            )
        self.app = ProxyApiApp(proxies)
        self.host = host
        self._requested_port = port
        self._socket: socket.socket | None = None
        self._server: LoopServer | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def address(self) -> tuple[str, int]:
        """The bound address once started (the requested one before)."""
        if self._socket is not None:
            host, port = self._socket.getsockname()[:2]
            return str(host), int(port)
        return self.host, self._requested_port

    @property
    def url(self) -> str:
        return f"http://{format_address(self.address)}"

    async def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("ProxyApiServer: already started")
        try:
            self._socket = bind_listener(self.host, self._requested_port)
        except OSError as error:
            address = format_address((self.host, self._requested_port))
            raise Conflict(f"listen: cannot listen on {address}: {error}") from error
        self._server = LoopServer.quiet(
            self.app, connections_max=ADMIN_CONNECTIONS_MAX, shutdown_s=ADMIN_SHUTDOWN_S_MAX
        )
        self._task = asyncio.create_task(self._serve(self._server, self._socket), name="proxy-api")
        if not await self._server.wait_serving(self._task):
            await self.aclose()
            raise RuntimeError("the proxy API stopped while starting")

    @staticmethod
    async def _serve(server: LoopServer, sock: socket.socket) -> None:
        try:
            await server.serve(sockets=[sock])
        finally:
            sock.close()

    async def aclose(self) -> None:
        server, task = self._server, self._task
        self._task = None
        if server is not None:
            server.should_exit = True
        if task is not None:
            await task

    async def __aenter__(self) -> ProxyApiServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"ProxyApiServer(url={self.url!r})"


# -- the client -----------------------------------------------------------------------------


class _Populated(msgspec.Struct):
    proxies: list[ProxyState]


_ERRORS: Final[dict[int, type[Rejected]]] = {
    400: BadRequest,
    404: ProxyNotFound,
    405: BadRequest,
    409: Conflict,
    413: TooLarge,
}


class ProxyAdmin:
    """An async client of the admin API at ``base_url``.

    Each call raises what the server's answer means (see the module) or
    :class:`~phalanx.errors.Unavailable` when the API cannot be reached; ``timeout_s``
    bounds each request. Close it with :meth:`aclose` or use ``async with``.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_ADMIN_URL,
        *,
        timeout_s: float = ADMIN_REQUEST_TIMEOUT_S,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = httpx.AsyncClient(
            base_url=self.base_url, timeout=timeout_s, transport=transport
        )

    async def _call(self, method: str, path: str, body: object = None) -> bytes:
        content = None if body is None else _ENCODER.encode(body)
        headers = {"content-type": "application/json"} if content is not None else None
        try:
            response = await self._client.request(method, path, content=content, headers=headers)
        except httpx.TransportError as error:
            raise Unavailable(f"proxy API at {self.base_url}: {error!r}") from error
        if response.status_code < 300:
            return response.content
        try:
            message = str(msgspec.json.decode(response.content)["error"])
        except (msgspec.DecodeError, KeyError, TypeError):
            message = response.text or response.reason_phrase
        error_class = _ERRORS.get(response.status_code)
        if error_class is None:
            raise PhalanxError(f"proxy API: HTTP {response.status_code}: {message}")
        raise error_class(message)

    async def version(self) -> str:
        answer = msgspec.json.decode(await self._call("GET", "/version"), type=dict[str, str])
        return answer["version"]

    async def proxies(self) -> dict[str, ProxyState]:
        """Every proxy, by name."""
        return msgspec.json.decode(await self._call("GET", "/proxies"), type=dict[str, ProxyState])

    async def proxy(self, name: str) -> ProxyState:
        return msgspec.json.decode(await self._call("GET", f"/proxies/{name}"), type=ProxyState)

    async def create(
        self, name: str, listen: str, upstream: str, *, enabled: bool = True
    ) -> ProxyState:
        """Create a proxy; ``listen`` with port 0 binds a free port (see the answer)."""
        config = ProxyConfig(name=name, listen=listen, upstream=upstream, enabled=enabled)
        return msgspec.json.decode(await self._call("POST", "/proxies", config), type=ProxyState)

    async def populate(self, configs: Sequence[ProxyConfig]) -> list[ProxyState]:
        """Create each proxy or bring the one of that name to its config."""
        answer = await self._call("POST", "/populate", list(configs))
        return msgspec.json.decode(answer, type=_Populated).proxies

    async def update(
        self,
        name: str,
        *,
        enabled: bool | None = None,
        listen: str | None = None,
        upstream: str | None = None,
    ) -> ProxyState:
        fields = {"enabled": enabled, "listen": listen, "upstream": upstream}
        body = {field: value for field, value in fields.items() if value is not None}
        answer = await self._call("POST", f"/proxies/{name}", body)
        return msgspec.json.decode(answer, type=ProxyState)

    async def enable(self, name: str) -> ProxyState:
        return await self.update(name, enabled=True)

    async def disable(self, name: str) -> ProxyState:
        """Close the proxy's listener and every connection through it: the link is cut."""
        return await self.update(name, enabled=False)

    async def delete(self, name: str) -> None:
        await self._call("DELETE", f"/proxies/{name}")

    async def statistics(self, name: str) -> ProxyStatistics:
        answer = await self._call("GET", f"/proxies/{name}/statistics")
        return msgspec.json.decode(answer, type=ProxyStatistics)

    async def toxics(self, proxy: str) -> list[ToxicSpec]:
        answer = await self._call("GET", f"/proxies/{proxy}/toxics")
        return msgspec.json.decode(answer, type=list[ToxicSpec])

    async def add_toxic(
        self,
        proxy: str,
        type: str,  # noqa: A002 - Toxiproxy's word
        *,
        stream: str = "downstream",
        toxicity: float = 1.0,
        name: str | None = None,
        attributes: dict[str, int] | None = None,
    ) -> ToxicSpec:
        """Add a toxic (after the others of its stream); answers it with its defaults."""
        spec = ToxicSpec(
            type=type,
            name=name or "",
            stream=stream,
            toxicity=toxicity,
            attributes=dict(attributes or {}),
        )
        answer = await self._call("POST", f"/proxies/{proxy}/toxics", spec)
        return msgspec.json.decode(answer, type=ToxicSpec)

    async def update_toxic(
        self,
        proxy: str,
        toxic: str,
        *,
        attributes: dict[str, int] | None = None,
        toxicity: float | None = None,
    ) -> ToxicSpec:
        """Merge ``attributes`` over the toxic's and/or set its ``toxicity``."""
        body: dict[str, object] = {}
        if attributes is not None:
            body["attributes"] = attributes
        if toxicity is not None:
            body["toxicity"] = toxicity
        answer = await self._call("POST", f"/proxies/{proxy}/toxics/{toxic}", body)
        return msgspec.json.decode(answer, type=ToxicSpec)

    async def remove_toxic(self, proxy: str, toxic: str) -> None:
        await self._call("DELETE", f"/proxies/{proxy}/toxics/{toxic}")

    async def reset(self) -> None:
        """Enable every proxy and remove every toxic."""
        await self._call("POST", "/reset")

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> ProxyAdmin:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"ProxyAdmin({self.base_url!r})"
