"""Typed configuration documents in the cluster, and watch-driven reload.

A document is a ``msgspec.Struct`` or a dataclass, stored as JSON under
``<prefix><name>`` in an envelope that carries its schema version::

    {"schema": 2, "kind": "Limits", "doc": {"rate_per_s": 100, "burst": 20}}

A type declares its version with a class variable ``schema_version: ClassVar[int] = 2``
(default 1). Reading checks the version and validates the document against the type with
msgspec (field types, required fields, and ``__post_init__`` checks); anything else raises
:class:`InvalidConfig`, so a reader never gets a half-valid document.

:meth:`ConfigStore.watch` yields each valid version of a document, driven by a watch of its
key (no polling); :class:`Reloader` calls an application's callback for each one and keeps the
last good document when an invalid one is written (it is logged and skipped).

Errors::

    Rejected
    └── BadRequest
        └── InvalidConfig   a stored document does not decode, validate, or has another schema
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Generic, TypeVar, cast

import msgspec

from phalanx.client.client import AsyncClient
from phalanx.client.results import WatchEvent
from phalanx.errors import BadRequest, PhalanxError, TooLarge, Unavailable
from phalanx.kv.errors import Compacted

__all__ = [
    "CONFIG_PREFIX",
    "DOC_BYTES_MAX",
    "ConfigChange",
    "ConfigStore",
    "InvalidConfig",
    "Reloader",
    "decode_doc",
    "encode_doc",
    "schema_version_of",
]

_log = logging.getLogger(__name__)

T = TypeVar("T")

#: Where configuration documents live.
CONFIG_PREFIX: Final = b"/phalanx/config/"
#: The largest encoded document (the store's own value limit is 1 MiB).
DOC_BYTES_MAX: Final = 256 * 1024
#: Names are key suffixes: bounded.
NAME_BYTES_MAX: Final = 256
#: Times a watch of a document starts again from a fresh read after its history was compacted.
WATCH_RESTARTS_MAX: Final = 100


class InvalidConfig(BadRequest):
    """The document ``name`` at ``revision`` is not a valid document of the expected type."""

    def __init__(self, message: str = "", *, name: str = "", revision: int = 0) -> None:
        super().__init__(message)
        self.name = name
        self.revision = revision


class _Envelope(msgspec.Struct, frozen=True):
    schema: int
    doc: msgspec.Raw
    kind: str = ""


def schema_version_of(kind: type[Any]) -> int:
    """``kind.schema_version`` when it declares one, else 1."""
    version = getattr(kind, "schema_version", 1)
    if not isinstance(version, int) or version < 1:
        raise BadRequest(f"{kind.__name__}.schema_version must be an int >= 1, got {version!r}")
    return version


def encode_doc(doc: object) -> bytes:
    """The stored bytes of ``doc`` (a msgspec Struct or a dataclass instance)."""
    kind = type(doc)
    if not isinstance(doc, msgspec.Struct) and not (
        dataclasses.is_dataclass(doc) and not isinstance(doc, type)
    ):
        raise BadRequest(f"a config document is a msgspec Struct or a dataclass, not {kind}")
    envelope = {
        "schema": schema_version_of(kind),
        "kind": kind.__name__,
        "doc": msgspec.Raw(msgspec.json.encode(doc)),
    }
    data = msgspec.json.encode(envelope)
    if len(data) > DOC_BYTES_MAX:
        raise TooLarge(f"config document of {len(data)} bytes > {DOC_BYTES_MAX}")
    return data


def decode_doc(data: bytes, kind: type[T], *, name: str = "", revision: int = 0) -> T:
    """The document of type ``kind`` in ``data``; :class:`InvalidConfig` for anything else."""

    def invalid(why: str) -> InvalidConfig:
        where = f"{name!r} at revision {revision}" if name else "document"
        return InvalidConfig(f"config {where}: {why}", name=name, revision=revision)

    if len(data) > DOC_BYTES_MAX:
        raise invalid(f"{len(data)} bytes > {DOC_BYTES_MAX}")
    try:
        envelope = msgspec.json.decode(data, type=_Envelope)
    except msgspec.DecodeError as exc:
        raise invalid(f"not a config envelope: {exc}") from None
    expected = schema_version_of(kind)
    if envelope.schema != expected:
        raise invalid(f"schema version {envelope.schema}, {kind.__name__} reads {expected}")
    try:
        return msgspec.json.decode(envelope.doc, type=kind)
    except (msgspec.DecodeError, ValueError, TypeError) as exc:
        raise invalid(f"not a valid {kind.__name__}: {exc}") from None


@dataclass(frozen=True, slots=True)
class ConfigChange(Generic[T]):
    """One change of a document: ``doc`` when valid, ``error`` when invalid, neither when it
    was deleted; ``revision`` is the change's revision."""

    revision: int
    doc: T | None = None
    error: InvalidConfig | None = None

    @property
    def deleted(self) -> bool:
        return self.doc is None and self.error is None


class ConfigStore:
    """Typed documents under ``prefix`` in the cluster ``client`` talks to."""

    def __init__(self, client: AsyncClient, prefix: bytes = CONFIG_PREFIX) -> None:
        self.client = client
        self.prefix = prefix

    def key(self, name: str) -> bytes:
        encoded = name.encode()
        if not encoded or len(encoded) > NAME_BYTES_MAX:
            raise BadRequest(f"config name {name!r}: 1..{NAME_BYTES_MAX} bytes expected")
        return self.prefix + encoded

    async def put(self, name: str, doc: object) -> int:
        """Store ``doc`` as ``name``; the write's revision."""
        return await self.client.put(self.key(name), encode_doc(doc))

    async def get(self, name: str, kind: type[T]) -> T | None:
        """The document ``name`` as a ``kind`` (None when there is none); raises
        :class:`InvalidConfig` when the stored one is not a valid ``kind``."""
        result = await self.client.range(self.key(name))
        if not result.kvs:
            return None
        kv = result.kvs[0]
        return decode_doc(kv.value, kind, name=name, revision=kv.mod_revision)

    async def delete(self, name: str) -> bool:
        return await self.client.delete(self.key(name)) > 0

    async def changes(self, name: str, kind: type[T]) -> AsyncIterator[ConfigChange[T]]:
        """The document's current state (when it exists), then every change, in order,
        valid or not."""
        key = self.key(name)
        for _ in range(WATCH_RESTARTS_MAX):
            current = await self.client.range(key)
            if current.kvs:
                kv = current.kvs[0]
                yield self._change(name, kind, kv.value, kv.mod_revision)
            events = cast(
                "AsyncGenerator[WatchEvent, None]",
                self.client.watch(key, start_revision=current.revision + 1),
            )
            try:
                async with contextlib.aclosing(events):
                    async for event in events:
                        if event.type == "delete":
                            yield ConfigChange(event.revision)
                        else:
                            yield self._change(name, kind, event.value, event.revision)
            except Compacted:
                continue  # the history we needed is gone: read the document again
        raise Unavailable(f"config watch restarted {WATCH_RESTARTS_MAX} times after compaction")

    async def watch(self, name: str, kind: type[T]) -> AsyncIterator[T]:
        """The current document (if valid), then each new valid version. Invalid versions
        and deletions are logged and skipped."""
        async for change in self.changes(name, kind):
            if change.doc is not None:
                yield change.doc
            else:
                _log_skipped(name, change)

    @staticmethod
    def _change(name: str, kind: type[T], value: bytes, revision: int) -> ConfigChange[T]:
        try:
            return ConfigChange(revision, decode_doc(value, kind, name=name, revision=revision))
        except InvalidConfig as exc:
            return ConfigChange(revision, error=exc)


def _log_skipped(name: str, change: ConfigChange[Any]) -> None:
    if change.error is not None:
        _log.warning("config %r: skipped an invalid version: %s", name, change.error)
    else:
        _log.warning(
            "config %r was deleted at revision %d; keeping the last one", name, change.revision
        )


Callback = Callable[[T], Awaitable[None] | None]


class Reloader(Generic[T]):
    """Calls ``callback(doc)`` for the document ``name`` now and on every valid change.

    An invalid version, a deletion, or a callback that raises is logged and skipped:
    :attr:`current` stays the last document the callback accepted. The watch runs in a
    task the reloader owns, from :meth:`start` (or ``async with``) to :meth:`aclose`.
    """

    def __init__(self, store: ConfigStore, name: str, kind: type[T], callback: Callback[T]) -> None:
        store.key(name)  # fail now on a bad name
        self.store = store
        self.name = name
        self.kind = kind
        self.callback = callback
        self.current: T | None = None
        #: The revision of the last change handled (applied or skipped).
        self.revision = 0
        self.failure: PhalanxError | None = None
        self._task: asyncio.Task[None] | None = None
        self._progress = asyncio.Condition()
        self._applied = 0
        self._invalid = 0
        self._rejected = 0

    async def start(self) -> None:
        if self._task is not None:
            raise RuntimeError(f"reloader of {self.name!r} already started")
        self._task = asyncio.create_task(self._run())

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def wait_revision(self, revision: int) -> None:
        """Return once every change up to ``revision`` was handled (bound it with
        ``asyncio.timeout``); raises the error that stopped the watch, if one did."""
        async with self._progress:
            await self._progress.wait_for(
                lambda: self.revision >= revision or self.failure is not None
            )
        if self.revision < revision and self.failure is not None:
            raise self.failure

    def statistics(self) -> dict[str, int]:
        return {
            "applied": self._applied,
            "invalid": self._invalid,
            "rejected_by_callback": self._rejected,
            "revision": self.revision,
        }

    async def _run(self) -> None:
        try:
            async for change in self.store.changes(self.name, self.kind):
                await self._handle(change)
                async with self._progress:
                    self.revision = change.revision
                    self._progress.notify_all()
        except PhalanxError as exc:
            _log.error("config %r: the reload watch stopped: %s", self.name, exc)
            async with self._progress:
                self.failure = exc
                self._progress.notify_all()

    async def _handle(self, change: ConfigChange[T]) -> None:
        if change.doc is None:
            if change.error is not None:
                self._invalid += 1
            _log_skipped(self.name, change)
            return
        try:
            result = self.callback(change.doc)
            if inspect.isawaitable(result):
                await result
        except Exception:
            self._rejected += 1
            _log.exception(
                "config %r: the callback refused revision %d", self.name, change.revision
            )
            return
        self.current = change.doc
        self._applied += 1

    async def __aenter__(self) -> Reloader[T]:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
