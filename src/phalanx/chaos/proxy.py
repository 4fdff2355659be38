"""A userspace TCP fault proxy: named proxies, each a listener in front of one upstream.

:class:`ProxyServer` owns every proxy of a process (Toxiproxy's server, without the HTTP
part, which is :mod:`phalanx.chaos.proxy_api`). A :class:`Proxy` listens on ``listen``; each
client connection it accepts gets its own connection to ``upstream`` and a
:class:`~phalanx.chaos.proxy_link.Link` that pipes bytes both ways through the proxy's
toxics (:mod:`phalanx.chaos.toxics`). A disabled proxy has no listener and no connections:
disabling closes them all, which is how a link is cut.

``listen`` with port 0 binds a free port; from then on the proxy reports, and keeps, the
bound address, so disabling and enabling it again reopens the same port. Changing
``listen`` or ``upstream`` restarts the proxy (open connections are closed, as in
Toxiproxy). Toxic changes reach open connections at once: a chunk held by a toxic that is
removed (or updated) passes on without waiting for it (or waits as the update says).

Errors (the tree of :mod:`phalanx.errors`): :class:`~phalanx.errors.BadRequest` for an
invalid name, address, toxic or update; :class:`ProxyNotFound` for an unknown proxy or
toxic; :class:`~phalanx.errors.Conflict` for a duplicate name, a full server or proxy
(``PROXIES_MAX``, ``TOXICS_PER_PROXY_MAX``), or a listen address that cannot be bound.

Each proxy draws toxicities, jitter and slice sizes from its own ``random.Random`` seeded
with the server's ``seed`` and the proxy's name, then one per connection in accept order,
so a seed replays the same draws for the same sequence of connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from typing import Final

import msgspec

from phalanx.chaos.proxy_link import Link, ProxyStatistics, Side
from phalanx.chaos.toxics import (
    Stream,
    ToxicSpec,
    ToxicUpdate,
    check_name,
    update_toxic,
    validate_toxic,
)
from phalanx.clock import SYSTEM_CLOCK, Clock
from phalanx.errors import BadRequest, Conflict, Rejected
from phalanx.health.server import bind_listener
from phalanx.node.cluster_spec import format_address, is_loopback

__all__ = [
    "CONNECTIONS_PER_PROXY_MAX",
    "PROXIES_MAX",
    "TOXICS_PER_PROXY_MAX",
    "Proxy",
    "ProxyConfig",
    "ProxyNotFound",
    "ProxyServer",
    "ProxyState",
    "ProxyStatistics",
    "ProxyUpdate",
    "format_address",
    "is_loopback",
    "parse_address",
]

#: Proxies one server holds.
PROXIES_MAX: Final = 256
#: Toxics one proxy holds, both streams together.
TOXICS_PER_PROXY_MAX: Final = 32
#: Client connections one proxy keeps open; more are closed as soon as they are accepted
#: (and counted as ``connections_refused``).
CONNECTIONS_PER_PROXY_MAX: Final = 1024
_PORT_MAX: Final = 65535


class ProxyNotFound(Rejected):
    """No proxy, or no toxic on that proxy, has that name."""


Address = tuple[str, int]


def parse_address(field: str, text: object, *, port_zero: bool = False) -> Address:
    """``"host:port"`` (``"[::1]:port"`` for IPv6) as ``(host, port)``; :class:`BadRequest`
    naming ``field`` otherwise. Port 0 is accepted only with ``port_zero``."""
    if not isinstance(text, str):
        raise BadRequest(f"{field}: expected a 'host:port' string, got {text!r}")
    host, sep, port_text = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port_text.isdigit():
        raise BadRequest(f"{field}: expected 'host:port', got {text!r}")
    port = int(port_text)
    low = 0 if port_zero else 1
    if not low <= port <= _PORT_MAX:
        raise BadRequest(f"{field}: port must be in {low}..{_PORT_MAX}, got {port}")
    return host, port


class ProxyConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A proxy to create (``POST /proxies``, one item of ``POST /populate``).

    ``toxics``, when given, replaces the proxy's toxics (a Phalanx extension: Toxiproxy's
    populate takes proxies only).
    """

    name: str
    listen: str
    upstream: str
    enabled: bool = True
    toxics: list[ToxicSpec] | None = None


class ProxyUpdate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The body of ``POST /proxies/{name}``: the fields to change (``name`` cannot)."""

    name: str | None = None
    listen: str | None = None
    upstream: str | None = None
    enabled: bool | None = None
    toxics: list[ToxicSpec] | None = None  # sent back by clients that post a whole proxy


class ProxyState(msgspec.Struct, kw_only=True):
    """A proxy as the API shows it (Toxiproxy's JSON shape)."""

    name: str
    listen: str
    upstream: str
    enabled: bool
    toxics: list[ToxicSpec]


class _ClientSide(Side):
    """The accepted socket of a client; tells its proxy once it is connected."""

    def __init__(self, proxy: Proxy) -> None:
        super().__init__("client")
        self._proxy = proxy

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._proxy._accept(self)


class Proxy:
    """One listener, its connections and its toxics. Create through :class:`ProxyServer`."""

    def __init__(
        self, name: str, listen: Address, upstream: Address, *, clock: Clock, rng: random.Random
    ) -> None:
        self.name = check_name("name", name)
        self.listen = listen
        self.upstream = upstream
        self._clock = clock
        self._rng = rng
        self._toxics: dict[str, ToxicSpec] = {}
        self._revision = 0
        self._server: asyncio.Server | None = None
        self._links: dict[Link, asyncio.Task[None]] = {}
        self._statistics = ProxyStatistics()

    # -- ToxicSource --------------------------------------------------------------------------

    @property
    def revision(self) -> int:
        return self._revision

    def toxics(self, stream: Stream | None = None) -> list[ToxicSpec]:
        """The toxics (of ``stream``, or all) in the order they were added."""
        return [t for t in self._toxics.values() if stream is None or t.stream == stream]

    # -- listening ----------------------------------------------------------------------------

    @property
    def enabled(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        """Listen (no-op when already listening); :class:`Conflict` if it cannot bind."""
        if self._server is not None:
            return
        try:
            sock = bind_listener(*self.listen)
        except OSError as error:
            address = format_address(self.listen)
            raise Conflict(f"listen: cannot listen on {address}: {error}") from error
        try:
            self._server = await asyncio.get_running_loop().create_server(
                lambda: _ClientSide(self), sock=sock
            )
        except BaseException:
            sock.close()
            raise
        host, port = sock.getsockname()[:2]
        self.listen = (str(host), int(port))

    async def stop(self) -> None:
        """Close the listener and every open connection (FIN to both ends)."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        tasks = list(self._links.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if server is not None:
            await server.wait_closed()

    def _accept(self, client: Side) -> None:
        self._statistics.connections_accepted += 1
        if self._server is None or len(self._links) >= CONNECTIONS_PER_PROXY_MAX:
            self._statistics.connections_refused += 1
            client.close(reset=False)
            return
        link = Link(
            client,
            self.upstream,
            self,
            self._statistics,
            clock=self._clock,
            rng=random.Random(self._rng.getrandbits(64)),
        )
        self._links[link] = asyncio.get_running_loop().create_task(
            self._run_link(link), name=f"proxy-{self.name}-link"
        )

    async def _run_link(self, link: Link) -> None:
        self._statistics.connections_open += 1
        try:
            await link.run()
        finally:
            self._statistics.connections_open -= 1
            self._links.pop(link, None)

    # -- toxics -------------------------------------------------------------------------------

    def _changed(self) -> None:
        self._revision += 1
        for link in self._links:
            link.poke()

    def toxic(self, name: str) -> ToxicSpec:
        """The toxic called ``name``; :class:`ProxyNotFound` if there is none."""
        toxic = self._toxics.get(name)
        if toxic is None:
            raise ProxyNotFound(f"toxic {name!r} not found on proxy {self.name!r}")
        return toxic

    def add_toxic(self, spec: ToxicSpec) -> ToxicSpec:
        """Add a toxic after the others of its stream; returns it completed with defaults."""
        toxic = validate_toxic(spec)
        if toxic.name in self._toxics:
            raise Conflict(f"toxic {toxic.name!r} already exists on proxy {self.name!r}")
        if len(self._toxics) >= TOXICS_PER_PROXY_MAX:
            raise Conflict(f"proxy {self.name!r} has {TOXICS_PER_PROXY_MAX} toxics, the most")
        self._toxics[toxic.name] = toxic
        self._changed()
        return toxic

    def update_toxic(self, name: str, update: ToxicUpdate) -> ToxicSpec:
        """Change a toxic's attributes or toxicity, keeping its place in the order."""
        toxic = update_toxic(self.toxic(name), update)
        self._toxics[name] = toxic
        self._changed()
        return toxic

    def remove_toxic(self, name: str) -> None:
        self.toxic(name)
        del self._toxics[name]
        self._changed()

    def replace_toxics(self, specs: list[ToxicSpec]) -> None:
        """Replace every toxic by ``specs`` (validated together first: all or nothing)."""
        toxics = _validate_toxics(specs)
        self._toxics = {t.name: t for t in toxics}
        self._changed()

    # -- views --------------------------------------------------------------------------------

    def state(self) -> ProxyState:
        return ProxyState(
            name=self.name,
            listen=format_address(self.listen),
            upstream=format_address(self.upstream),
            enabled=self.enabled,
            toxics=self.toxics(),
        )

    def statistics(self) -> ProxyStatistics:
        """A snapshot of the proxy's counters."""
        return msgspec.structs.replace(self._statistics)

    def __repr__(self) -> str:
        return (
            f"Proxy({self.name!r}, listen={format_address(self.listen)!r}, "
            f"upstream={format_address(self.upstream)!r}, enabled={self.enabled})"
        )


def _validate_toxics(specs: list[ToxicSpec]) -> list[ToxicSpec]:
    if len(specs) > TOXICS_PER_PROXY_MAX:
        raise Conflict(f"toxics: at most {TOXICS_PER_PROXY_MAX} per proxy, got {len(specs)}")
    toxics = [validate_toxic(spec) for spec in specs]
    names = [t.name for t in toxics]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise Conflict(f"toxics: duplicate names {duplicates}")
    return toxics


class _Checked(msgspec.Struct, frozen=True):
    name: str
    listen: Address
    upstream: Address
    enabled: bool
    toxics: list[ToxicSpec] | None


def _check_config(config: ProxyConfig) -> _Checked:
    return _Checked(
        check_name("name", config.name),
        parse_address("listen", config.listen, port_zero=True),
        parse_address("upstream", config.upstream),
        config.enabled,
        None if config.toxics is None else _validate_toxics(config.toxics),
    )


class ProxyServer:
    """Every proxy of a process, by name. Use as ``async with ProxyServer() as server``.

    ``clock`` is what toxics wait on; ``seed`` seeds every random draw (see the module).
    """

    def __init__(self, *, clock: Clock = SYSTEM_CLOCK, seed: int = 0) -> None:
        self.clock = clock
        self.seed = seed
        self._proxies: dict[str, Proxy] = {}
        self._lock = asyncio.Lock()  # one change at a time: each may await (bind, close)

    def proxies(self) -> dict[str, Proxy]:
        """The proxies by name, in the order they were created."""
        return dict(self._proxies)

    def get(self, name: str) -> Proxy:
        proxy = self._proxies.get(name)
        if proxy is None:
            raise ProxyNotFound(f"proxy {name!r} not found")
        return proxy

    async def create(self, config: ProxyConfig) -> Proxy:
        """Create (and, when ``enabled``, start) a proxy; :class:`Conflict` if it exists."""
        checked = _check_config(config)
        async with self._lock:
            if checked.name in self._proxies:
                raise Conflict(f"proxy {checked.name!r} already exists")
            return await self._create(checked)

    async def _create(self, checked: _Checked) -> Proxy:
        if len(self._proxies) >= PROXIES_MAX:
            raise Conflict(f"this server has {PROXIES_MAX} proxies, the most")
        proxy = Proxy(
            checked.name,
            checked.listen,
            checked.upstream,
            clock=self.clock,
            rng=random.Random(f"{self.seed}:{checked.name}"),
        )
        if checked.toxics is not None:
            proxy.replace_toxics(checked.toxics)
        if checked.enabled:
            await proxy.start()
        self._proxies[proxy.name] = proxy
        return proxy

    async def populate(self, configs: list[ProxyConfig]) -> list[Proxy]:
        """Create each proxy, or bring an existing one of that name to its config.

        Everything is validated before anything changes. A proxy whose ``listen`` and
        ``upstream`` are unchanged keeps running (and its connections); otherwise it is
        replaced. ``enabled`` is applied, and ``toxics`` when given. A listen address that
        cannot be bound (:class:`Conflict`) stops the list there: the proxies before it are
        in place, that one and those after it are not.
        """
        checked = [_check_config(config) for config in configs]
        names = [c.name for c in checked]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise Conflict(f"populate: duplicate proxy names {duplicates}")
        async with self._lock:
            new = [c for c in checked if c.name not in self._proxies]
            if len(self._proxies) + len(new) > PROXIES_MAX:
                raise Conflict(f"populate: this server holds at most {PROXIES_MAX} proxies")
            return [await self._populate_one(c) for c in checked]

    async def _populate_one(self, checked: _Checked) -> Proxy:
        proxy = self._proxies.get(checked.name)
        if proxy is not None and not _same_addresses(proxy, checked):
            await proxy.stop()
            del self._proxies[checked.name]
            proxy = None
        if proxy is None:
            return await self._create(checked)
        if checked.toxics is not None:
            proxy.replace_toxics(checked.toxics)
        await (proxy.start() if checked.enabled else proxy.stop())
        return proxy

    async def update(self, name: str, update: ProxyUpdate) -> Proxy:
        """Change ``listen``, ``upstream`` or ``enabled`` of a proxy.

        A new ``listen`` that cannot be bound is a :class:`Conflict` that leaves the proxy as
        it was: its old addresses, and listening again on the old one if it was enabled (its
        open connections are closed all the same).
        """
        if update.name is not None and update.name != name:
            raise BadRequest("name: cannot be changed (delete and create instead)")
        async with self._lock:
            proxy = self.get(name)
            listen = (
                proxy.listen
                if update.listen is None
                else parse_address("listen", update.listen, port_zero=True)
            )
            upstream = (
                proxy.upstream
                if update.upstream is None
                else parse_address("upstream", update.upstream)
            )
            enabled = proxy.enabled if update.enabled is None else update.enabled
            if (listen, upstream) != (proxy.listen, proxy.upstream):
                was_enabled = proxy.enabled
                await proxy.stop()
                previous = proxy.listen, proxy.upstream
                proxy.listen, proxy.upstream = listen, upstream
                if enabled:
                    try:
                        await proxy.start()
                    except Conflict:
                        # The proxy stays as it was: old addresses, listening if it was.
                        proxy.listen, proxy.upstream = previous
                        if was_enabled:
                            with contextlib.suppress(Conflict):  # the old port taken meanwhile
                                await proxy.start()
                        raise
            await (proxy.start() if enabled else proxy.stop())
            return proxy

    async def delete(self, name: str) -> None:
        """Stop a proxy (closing its connections) and forget it."""
        async with self._lock:
            proxy = self.get(name)
            del self._proxies[name]
            await proxy.stop()

    async def reset(self) -> None:
        """Enable every proxy and remove every toxic (Toxiproxy's ``POST /reset``)."""
        async with self._lock:
            for proxy in self._proxies.values():
                proxy.replace_toxics([])
                with contextlib.suppress(Conflict):  # a port taken meanwhile stays disabled
                    await proxy.start()

    async def aclose(self) -> None:
        """Stop every proxy; the server is empty afterwards."""
        async with self._lock:
            proxies = list(self._proxies.values())
            self._proxies.clear()
            for proxy in proxies:
                await proxy.stop()

    async def __aenter__(self) -> ProxyServer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"ProxyServer(proxies={list(self._proxies)}, seed={self.seed})"


def _same_addresses(proxy: Proxy, checked: _Checked) -> bool:
    if checked.upstream != proxy.upstream:
        return False
    host, port = checked.listen
    # Port 0 asked again for a proxy that already bound one: the same listen address.
    return checked.listen == proxy.listen or (port == 0 and host == proxy.listen[0])
