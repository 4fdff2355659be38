"""Idempotency keys for HTTP: a pure ASGI middleware, no framework required.

This module owns :class:`IdempotencyMiddleware`. For a request whose method is in ``methods``
and that carries the ``Idempotency-Key`` header, it buffers the body (at most
``body_bytes_max``), fingerprints method, path, query string and body, and then:

=====================================================  ========================================
situation                                              response
=====================================================  ========================================
first request with the key                             the app runs once; its response is
                                                       stored (at most ``response_bytes_max``)
duplicate after completion                             the stored response, replayed, with
                                                       ``Idempotent-Replayed: true``
duplicate while the first runs                         409 with ``Retry-After`` (or it waits up
                                                       to ``wait_s`` and replays)
same key, different method/path/query/body             422
key empty or longer than 255 bytes, or repeated        400
body over ``body_bytes_max``                           413 (the app does not run)
store full of in-progress keys                         503
duplicate of a response too large to store             409 (the app does not run again)
=====================================================  ========================================

Requests without the header, with other methods, and non-HTTP scopes pass through untouched.

Only responses accepted by ``store_if`` are stored: by default 2xx and 3xx
(:func:`success_status`). Any other status, an exception from the app, or a response never
finished releases the key so the client's retry runs again. Pass
``store_if=definitive_status`` to also store 4xx answers that a retry would only repeat.

The response is streamed to the client as the app produces it and captured on the side. If
the client has gone away meanwhile, the app still finishes and its response is stored, so
the client's retry gets the replay: that is the case idempotency keys exist for.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from phalanx.clock import SYSTEM_CLOCK, Clock
from phalanx.errors import BadRequest, Conflict, Unavailable
from phalanx.resilience.config import parse_count
from phalanx.resilience.events import Listener
from phalanx.resilience.idempotency.fingerprint import fingerprint_request
from phalanx.resilience.idempotency.guard import (
    FingerprintMismatch,
    Idempotency,
    IdempotencyStatistics,
    KeyInProgress,
    Ticket,
    validate_key,
)
from phalanx.resilience.idempotency.store import IdempotencyStore
from phalanx.resilience.keys import IDEMPOTENCY_KEY_BYTES_MAX

__all__ = [
    "ASGIApp",
    "IdempotencyMiddleware",
    "StoredResponse",
    "decode_response",
    "definitive_status",
    "encode_response",
    "success_status",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

Headers = list[tuple[bytes, bytes]]

_STATUS_HEAD = struct.Struct(">HH")  # status, number of headers
_HEADER_HEAD = struct.Struct(">HI")  # name length, value length


def success_status(status: int) -> bool:
    """2xx and 3xx: the default of what is stored and replayed."""
    return 200 <= status < 400


def definitive_status(status: int) -> bool:
    """Success, plus the 4xx answers a retry would only repeat.

    408, 409, 425 and 429 are left out: they describe the moment, not the request.
    """
    return 200 <= status < 500 and status not in (408, 409, 425, 429)


@dataclass(slots=True)
class StoredResponse:
    """A captured response: status, headers (raw ASGI pairs) and the whole body."""

    status: int
    headers: Headers
    body: bytes = field(repr=False)


def encode_response(response: StoredResponse) -> bytes:
    """A compact binary encoding: status, header count, length-prefixed headers, body."""
    parts = [_STATUS_HEAD.pack(response.status, len(response.headers))]
    for name, value in response.headers:
        parts.append(_HEADER_HEAD.pack(len(name), len(value)))
        parts.append(name)
        parts.append(value)
    parts.append(response.body)
    return b"".join(parts)


def decode_response(data: bytes) -> StoredResponse:
    """The inverse of :func:`encode_response`."""
    status, count = _STATUS_HEAD.unpack_from(data, 0)
    offset = _STATUS_HEAD.size
    headers: Headers = []
    for _ in range(count):
        name_len, value_len = _HEADER_HEAD.unpack_from(data, offset)
        offset += _HEADER_HEAD.size
        name = data[offset : offset + name_len]
        offset += name_len
        headers.append((name, data[offset : offset + value_len]))
        offset += value_len
    return StoredResponse(status, headers, data[offset:])


class _Capture:
    """Forwards a response to the client while keeping a bounded copy of it."""

    def __init__(self, send: Send, bytes_max: int) -> None:
        self._send = send
        self._bytes_max = bytes_max
        self._size = _STATUS_HEAD.size
        self._body: list[bytes] = []
        self.status: int | None = None
        self.headers: Headers = []
        self.overflow = False
        self.finished = False
        self.client_gone = False

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = int(message["status"])
            self.headers = [(bytes(n), bytes(v)) for n, v in message.get("headers", ())]
            self._grow(sum(_HEADER_HEAD.size + len(n) + len(v) for n, v in self.headers))
        elif message["type"] == "http.response.body":
            chunk = bytes(message.get("body", b""))
            self._grow(len(chunk))
            if not self.overflow:
                self._body.append(chunk)
            if not message.get("more_body", False):
                self.finished = True
        if self.client_gone:
            return
        try:
            await self._send(message)
        except OSError:
            # The client went away. Let the app finish so its response is stored and the
            # client's retry is answered from it instead of running the operation again.
            self.client_gone = True

    def _grow(self, n_bytes: int) -> None:
        self._size += n_bytes
        if self._size > self._bytes_max and not self.overflow:
            # Stop copying: the memory a request can pin is bounded by response_bytes_max.
            self.overflow = True
            self._body.clear()

    def stored(self) -> StoredResponse | None:
        if self.status is None or self.overflow:
            return None
        return StoredResponse(self.status, self.headers, b"".join(self._body))


class IdempotencyMiddleware:
    """Deduplicate unsafe HTTP requests by their ``Idempotency-Key`` header.

    Mount it around any ASGI app: ``app = IdempotencyMiddleware(app, store)``, or with
    Starlette/FastAPI ``app.add_middleware(IdempotencyMiddleware, store=store)``.
    ``ttl_s``, ``lease_s``, ``wait_s``, ``poll_interval_s``, ``clock``, ``name`` and
    ``listeners`` configure the underlying :class:`~.guard.Idempotency`. ``key_scope``, when
    given, maps the request scope to a namespace (e.g. the authenticated account) so two
    clients choosing the same key never see each other's responses; the record is then kept
    under :func:`~.guard.scoped_key`, whose length does not depend on the namespace.
    """

    def __init__(
        self,
        app: ASGIApp,
        store: IdempotencyStore,
        *,
        methods: tuple[str, ...] = ("POST", "PUT", "PATCH", "DELETE"),
        header: str = "Idempotency-Key",
        replay_header: str = "Idempotent-Replayed",
        body_bytes_max: int = 1 << 20,
        response_bytes_max: int = 1 << 20,
        store_if: Callable[[int], bool] = success_status,
        key_scope: Callable[[Scope], str] | None = None,
        ttl_s: float | str = 86_400.0,
        lease_s: float | str = 60.0,
        wait_s: float | str = 0.0,
        poll_interval_s: float | str = 0.05,
        clock: Clock = SYSTEM_CLOCK,
        name: str = "idempotency_http",
        listeners: tuple[Listener, ...] = (),
    ) -> None:
        self.app = app
        given: object = methods  # checked at run time, whatever the annotation says
        if isinstance(given, str):
            # A bare string would be taken letter by letter: ("P", "O", "S", "T").
            raise ValueError(
                f"methods: a tuple of HTTP method names, got the string {methods!r}; "
                f"write ({methods!r},)"
            )
        methods = tuple(methods)
        if not methods:
            raise ValueError("methods: at least one HTTP method is required")
        if not all(isinstance(m, str) and m.strip() for m in methods):
            raise ValueError(f"methods: each must be a non-empty string, got {methods!r}")
        self.methods = frozenset(m.strip().upper() for m in methods)
        self.header = _header_name("header", header)
        self._header_raw = header.lower().encode("latin-1")
        self._replay_header = (
            _header_name("replay_header", replay_header).lower().encode("latin-1"),
            b"true",
        )
        self.body_bytes_max = parse_count("body_bytes_max", body_bytes_max, minimum=1)
        self.response_bytes_max = parse_count("response_bytes_max", response_bytes_max, minimum=1)
        if not callable(store_if):
            raise ValueError(f"store_if: must be callable (status -> bool), got {store_if!r}")
        if key_scope is not None and not callable(key_scope):
            raise ValueError(f"key_scope: must be callable (scope -> str), got {key_scope!r}")
        self.store_if = store_if
        self.key_scope = key_scope
        self.guard = Idempotency(
            store,
            ttl_s=ttl_s,
            lease_s=lease_s,
            wait_s=wait_s,
            poll_interval_s=poll_interval_s,
            # The middleware enforces response_bytes_max itself, on the encoded response.
            result_bytes_max=self.response_bytes_max,
            clock=clock,
            name=name,
            listeners=listeners,
        )

    def statistics(self) -> IdempotencyStatistics:
        return self.guard.statistics()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or str(scope.get("method", "")).upper() not in self.methods:
            await self.app(scope, receive, send)
            return
        values = [v for n, v in scope.get("headers", ()) if bytes(n).lower() == self._header_raw]
        if not values:
            await self.app(scope, receive, send)
            return
        prepared = await self._prepare(scope, receive, values)
        if prepared is None:
            return  # the client disconnected before sending its body: nothing ran
        if isinstance(prepared, _Reply):
            await prepared.send(send)
            return
        key, namespace, body = prepared
        fingerprint = fingerprint_request(
            str(scope["method"]),
            str(scope.get("root_path", "")) + str(scope["path"]),
            body,
            query=bytes(scope.get("query_string", b"")),
        )
        ticket = await self._begin(key, namespace, fingerprint)
        if isinstance(ticket, _Reply):
            await ticket.send(send)
        elif ticket.acquired:
            await self._run(ticket, scope, body, receive, send)
        else:
            await self._replay(decode_response(ticket.payload), send)

    async def _prepare(
        self, scope: Scope, receive: Receive, values: list[bytes]
    ) -> tuple[str, str | None, bytes] | _Reply | None:
        """The key, its namespace and the whole body, or the error to answer with."""
        key = self._key(values)
        if isinstance(key, BadRequest):
            return _Reply(400, "bad_idempotency_key", str(key))
        declared = _content_length(scope)
        if declared is not None and declared > self.body_bytes_max:
            return self._too_large()
        body = await self._read_body(receive)
        if body is None:
            return None
        if isinstance(body, int):
            return self._too_large()
        namespace = None
        if self.key_scope is not None:
            namespace = self.key_scope(scope)
            if not isinstance(namespace, str):
                raise TypeError(f"key_scope: must return a str, got {namespace!r}")
        return key, namespace, body

    async def _begin(self, key: str, namespace: str | None, fingerprint: str) -> Ticket | _Reply:
        try:
            return await self.guard.abegin(key, fingerprint, namespace=namespace)
        except KeyInProgress as exc:
            retry_after = str(max(1, math.ceil(exc.retry_after_s or 1.0)))
            return _Reply(
                409, "idempotency_key_in_progress", str(exc), [(b"retry-after", retry_after)]
            )
        except FingerprintMismatch as exc:
            return _Reply(422, "idempotency_key_reused", str(exc))
        except Conflict as exc:
            return _Reply(409, "idempotency_result_unavailable", str(exc))
        except Unavailable as exc:
            return _Reply(503, "idempotency_store_full", str(exc))
        except BadRequest as exc:
            return _Reply(400, "bad_idempotency_key", str(exc))

    def _key(self, values: list[bytes]) -> str | BadRequest:
        if len(values) > 1:
            return BadRequest(f"{self.header}: the header must appear once")
        raw = bytes(values[0]).strip()
        if len(raw) > IDEMPOTENCY_KEY_BYTES_MAX:
            return BadRequest(
                f"{self.header}: longer than {IDEMPOTENCY_KEY_BYTES_MAX} bytes "
                "(IDEMPOTENCY_KEY_BYTES_MAX)"
            )
        try:
            return validate_key(raw.decode("latin-1"))
        except BadRequest as exc:
            return exc

    def _too_large(self) -> _Reply:
        detail = f"request body larger than body_bytes_max={self.body_bytes_max} bytes"
        return _Reply(413, "body_too_large", detail)

    async def _read_body(self, receive: Receive) -> bytes | int | None:
        """The whole body; its size so far (an int) once over the limit; None on disconnect."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            if message["type"] != "http.request":
                continue
            chunk = bytes(message.get("body", b""))
            size += len(chunk)
            if size > self.body_bytes_max:
                return size
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _run(
        self, ticket: Ticket, scope: Scope, body: bytes, receive: Receive, send: Send
    ) -> None:
        body_delivered = False

        async def replay_receive() -> Message:
            nonlocal body_delivered
            if not body_delivered:
                body_delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        capture = _Capture(send, self.response_bytes_max)
        try:
            await self.app(scope, replay_receive, capture)
        except BaseException:
            self.guard.abandon(ticket)
            raise
        if capture.status is None or not capture.finished or not self.store_if(capture.status):
            self.guard.abandon(ticket)
            return
        stored = capture.stored()
        self.guard.finish(ticket, None if stored is None else encode_response(stored))

    async def _replay(self, response: StoredResponse, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": response.status,
                "headers": [*response.headers, self._replay_header],
            }
        )
        await send({"type": "http.response.body", "body": response.body, "more_body": False})


def _header_name(field: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{field}: must be a header name (a non-empty str), got {value!r}")
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError(f"{field}: must be latin-1, as HTTP header names are") from None
    return value


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if bytes(name).lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class _Reply:
    """A small JSON error response produced by the middleware itself."""

    __slots__ = ("code", "detail", "extra_headers", "status")

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        extra_headers: list[tuple[bytes, str]] | None = None,
    ) -> None:
        self.status = status
        self.code = code
        self.detail = detail
        self.extra_headers = extra_headers or []

    async def send(self, send: Send) -> None:
        body = json.dumps({"error": self.code, "detail": self.detail}).encode("utf-8")
        headers: Headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode("ascii")),
        ]
        headers.extend((name, value.encode("latin-1")) for name, value in self.extra_headers)
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})
