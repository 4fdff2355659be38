"""``phalanx chaos proxy``: run the TCP fault proxy, and drive one through its HTTP API.

``phalanx chaos proxy serve [--listen 127.0.0.1:8474] [--config FILE.json] [--seed N]``
creates the proxies of FILE (a JSON list, the body of ``POST /populate``), serves the admin
API and runs until SIGINT or SIGTERM. Once everything listens it prints one line per proxy
and then, last, the API's address, so a parent process can read them::

    proxy db listening on 127.0.0.1:6432
    proxy cache disabled on 127.0.0.1:7379
    admin listening on 127.0.0.1:8474

The other commands talk to a running server (``--admin URL``, default
``http://127.0.0.1:8474``): ``list``, ``create``, ``delete``, ``enable``, ``disable``,
``toxic add|update|remove`` and ``reset``. An error prints one line and exits 1 (2 for a
usage error). See ``docs/chaos-proxy.md``.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import click
import msgspec

from phalanx.chaos.proxy import (
    Proxy,
    ProxyConfig,
    ProxyServer,
    ProxyState,
    format_address,
    is_loopback,
    parse_address,
)
from phalanx.chaos.proxy_api import (
    DEFAULT_ADMIN_HOST,
    DEFAULT_ADMIN_PORT,
    DEFAULT_ADMIN_URL,
    ProxyAdmin,
    ProxyApiServer,
)
from phalanx.chaos.toxics import STREAMS, TOXIC_TYPES, ToxicSpec
from phalanx.errors import BadRequest, PhalanxError

__all__ = ["proxy"]

T = TypeVar("T")


def _admin_option(function: Callable[..., None]) -> Callable[..., None]:
    return click.option(
        "--admin",
        "admin_url",
        default=DEFAULT_ADMIN_URL,
        show_default=True,
        envvar="PHALANX_PROXY_ADMIN",
        help="The proxy server's admin API.",
    )(function)


def _call(admin_url: str, call: Callable[[ProxyAdmin], Awaitable[T]]) -> T:
    async def run() -> T:
        async with ProxyAdmin(admin_url) as admin:
            return await call(admin)

    try:
        return asyncio.run(run())
    except PhalanxError as error:
        raise click.ClickException(str(error)) from error


def _attributes(
    _ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]
) -> dict[str, int]:
    attributes: dict[str, int] = {}
    for item in values:
        key, sep, value = item.partition("=")
        number = value.strip()
        if not sep or not key or not number.lstrip("-").isdigit():
            raise click.BadParameter(f"expected KEY=INTEGER, got {item!r}")
        attributes[key] = int(number)
    return attributes


def _proxy_line(state: ProxyState | Proxy) -> str:
    if isinstance(state, Proxy):
        state = state.state()
    verb = "listening" if state.enabled else "disabled"
    return f"proxy {state.name} {verb} on {state.listen}"


def _toxic_line(toxic: ToxicSpec) -> str:
    words = [toxic.type, toxic.stream, f"toxicity={toxic.toxicity:g}"]
    words += [f"{key}={value}" for key, value in toxic.attributes.items()]
    return f"toxic {toxic.name}: {' '.join(words)}"


@click.group("proxy")
def proxy() -> None:
    """A TCP fault proxy with Toxiproxy's toxics and HTTP API."""


# -- serve ----------------------------------------------------------------------------------


async def _serve(
    listen: tuple[str, int], configs: list[ProxyConfig], seed: int, allow_remote: bool
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        async with ProxyServer(seed=seed) as proxies:
            await proxies.populate(configs)
            api = ProxyApiServer(proxies, *listen, allow_remote=allow_remote)
            async with api:
                for each in proxies.proxies().values():
                    click.echo(_proxy_line(each))
                click.echo(f"admin listening on {format_address(api.address)}")
                await stop.wait()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


def _run_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` on uvloop when it is installed (faster sockets), else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


@proxy.command("serve")
@click.option(
    "--listen",
    default=f"{DEFAULT_ADMIN_HOST}:{DEFAULT_ADMIN_PORT}",
    show_default=True,
    help="The admin API's address (port 0 picks a free one).",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="A JSON list of proxies to create (the body of POST /populate).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds every random draw.")
@click.option(
    "--allow-remote",
    is_flag=True,
    help="Allow a non-loopback admin address (anyone reaching it controls every proxy).",
)
def serve(listen: str, config_path: Path | None, seed: int, allow_remote: bool) -> None:
    """Run the proxies and the admin API until SIGINT or SIGTERM."""
    try:
        address = parse_address("--listen", listen, port_zero=True)
        if not allow_remote and not is_loopback(address[0]):
            raise BadRequest(
                f"--listen: {address[0]} is not a loopback address; anyone reaching the API "
                "controls every proxy (add --allow-remote if that is meant)"
            )
        configs: list[ProxyConfig] = []
        if config_path is not None:
            configs = msgspec.json.decode(config_path.read_bytes(), type=list[ProxyConfig])
    except PhalanxError as error:
        raise click.UsageError(str(error)) from error
    except (msgspec.DecodeError, OSError) as error:
        raise click.ClickException(f"--config {config_path}: {error}") from error
    try:
        _run_loop(_serve(address, configs, seed, allow_remote))
    except PhalanxError as error:
        raise click.ClickException(str(error)) from error


# -- client commands ------------------------------------------------------------------------


@proxy.command("list")
@_admin_option
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON answer.")
def list_command(admin_url: str, as_json: bool) -> None:
    """List the proxies and their toxics."""
    states = _call(admin_url, lambda admin: admin.proxies())
    if as_json:
        click.echo(msgspec.json.format(msgspec.json.encode(states)).decode())
        return
    if not states:
        click.echo("no proxies")
    for state in states.values():
        click.echo(f"{_proxy_line(state)} -> {state.upstream}")
        for toxic in state.toxics:
            click.echo(f"  {_toxic_line(toxic)}")


@proxy.command("create")
@_admin_option
@click.argument("name")
@click.option("--listen", required=True, help="HOST:PORT to listen on (port 0: a free one).")
@click.option("--upstream", required=True, help="HOST:PORT to forward to.")
@click.option("--disabled", is_flag=True, help="Create it without listening yet.")
def create(admin_url: str, name: str, listen: str, upstream: str, disabled: bool) -> None:
    """Create a proxy; prints its bound listen address."""
    state = _call(
        admin_url, lambda admin: admin.create(name, listen, upstream, enabled=not disabled)
    )
    click.echo(_proxy_line(state))


@proxy.command("delete")
@_admin_option
@click.argument("name")
def delete(admin_url: str, name: str) -> None:
    """Delete a proxy, closing its connections."""
    _call(admin_url, lambda admin: admin.delete(name))
    click.echo(f"proxy {name} deleted")


@proxy.command("enable")
@_admin_option
@click.argument("name")
def enable(admin_url: str, name: str) -> None:
    """Listen again."""
    click.echo(_proxy_line(_call(admin_url, lambda admin: admin.enable(name))))


@proxy.command("disable")
@_admin_option
@click.argument("name")
def disable(admin_url: str, name: str) -> None:
    """Stop listening and close every connection: the link is cut."""
    click.echo(_proxy_line(_call(admin_url, lambda admin: admin.disable(name))))


@proxy.command("reset")
@_admin_option
def reset(admin_url: str) -> None:
    """Enable every proxy and remove every toxic."""
    _call(admin_url, lambda admin: admin.reset())
    click.echo("reset: every proxy enabled, every toxic removed")


@proxy.group("toxic")
def toxic() -> None:
    """Add, change and remove toxics."""


_ATTRIBUTE_OPTION = click.option(
    "-a",
    "--attribute",
    "attributes",
    multiple=True,
    callback=_attributes,
    metavar="KEY=VALUE",
    help="A toxic attribute (integer); repeat for several.",
)


@toxic.command("add")
@_admin_option
@click.argument("proxy_name", metavar="PROXY")
@click.option("--type", "kind", type=click.Choice(TOXIC_TYPES), required=True)
@click.option("--stream", type=click.Choice(STREAMS), default="downstream", show_default=True)
@click.option("--toxicity", type=click.FloatRange(0.0, 1.0), default=1.0, show_default=True)
@click.option("--name", default=None, help="Default: <type>_<stream>.")
@_ATTRIBUTE_OPTION
def toxic_add(
    admin_url: str,
    proxy_name: str,
    kind: str,
    stream: str,
    toxicity: float,
    name: str | None,
    attributes: dict[str, int],
) -> None:
    """Add a toxic to PROXY (after the others of its stream)."""
    added = _call(
        admin_url,
        lambda admin: admin.add_toxic(
            proxy_name, kind, stream=stream, toxicity=toxicity, name=name, attributes=attributes
        ),
    )
    click.echo(_toxic_line(added))


@toxic.command("update")
@_admin_option
@click.argument("proxy_name", metavar="PROXY")
@click.argument("toxic_name", metavar="TOXIC")
@click.option("--toxicity", type=click.FloatRange(0.0, 1.0), default=None)
@_ATTRIBUTE_OPTION
def toxic_update(
    admin_url: str,
    proxy_name: str,
    toxic_name: str,
    toxicity: float | None,
    attributes: dict[str, int],
) -> None:
    """Change a toxic's attributes (merged over the old ones) or toxicity."""
    updated = _call(
        admin_url,
        lambda admin: admin.update_toxic(
            proxy_name, toxic_name, attributes=attributes or None, toxicity=toxicity
        ),
    )
    click.echo(_toxic_line(updated))


@toxic.command("remove")
@_admin_option
@click.argument("proxy_name", metavar="PROXY")
@click.argument("toxic_name", metavar="TOXIC")
def toxic_remove(admin_url: str, proxy_name: str, toxic_name: str) -> None:
    """Remove a toxic from PROXY."""
    _call(admin_url, lambda admin: admin.remove_toxic(proxy_name, toxic_name))
    click.echo(f"toxic {toxic_name} removed from {proxy_name}")
