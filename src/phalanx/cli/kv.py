"""``phalanx kv``: read and write a cluster's key-value store.

Keys and values are UTF-8 text on the command line (``--hex`` for binary: hex in, hex out).
The cluster is found as every command finds it: ``--endpoints``, else ``$PHALANX_ENDPOINTS``,
else the local cluster recorded in ``./.phalanx/cluster.json``::

    phalanx kv put app/mode blue
    phalanx kv get app/ --prefix --json
    phalanx kv watch app/ --prefix --count 2
    printf 'value("app/mode") = "blue"\\n\\nput app/mode green\\n' | phalanx kv txn
    phalanx kv lease grant 10

A write that ends in ``Timeout`` or ``Indeterminate`` may or may not have been applied: the
command says so and exits with status 2 (other errors: 1). See docs/cli.md.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

import click

from phalanx.errors import Outcome, PhalanxError, outcome_of

__all__ = ["kv"]

T = TypeVar("T")

#: Exit status of a write whose outcome is unknown (it may or may not have been applied).
EXIT_INDETERMINATE: Final = 2
#: Every command's client call, retries included.
CALL_TIMEOUT_S: Final = 15.0
#: Most events ``watch --count`` may ask for.
WATCH_COUNT_MAX: Final = 1_000_000


def _endpoints_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--endpoints",
        default=None,
        help="Client addresses host:port,... (default: $PHALANX_ENDPOINTS, else "
        "./.phalanx/cluster.json).",
    )(fn)


def _hex_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--hex", "hex_mode", is_flag=True, help="Keys and values are hex, in and out."
    )(fn)


def _encode(text: str, hex_mode: bool, what: str = "KEY") -> bytes:
    if not hex_mode:
        return text.encode()
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not hex", param_hint=what) from None


def _decode(data: bytes, hex_mode: bool) -> str:
    return data.hex() if hex_mode else data.decode("utf-8", "backslashreplace")


def _resolve(given: str | None) -> list[str]:
    from phalanx.cli.endpoints import resolve_endpoints

    try:
        return list(resolve_endpoints(given))
    except (ValueError, PhalanxError) as exc:
        raise click.ClickException(str(exc)) from None


def _call(given: str | None, call: Callable[[Any], Awaitable[T]], *, write: bool = True) -> T:
    """Run ``call(client)`` against the cluster; errors become a message and an exit status
    (for a ``write``, an unknown outcome is said and has its own status)."""
    from phalanx.cli.endpoints import client_tls
    from phalanx.client import AsyncClient

    endpoints = _resolve(given)

    async def main() -> T:
        async with AsyncClient(
            endpoints, total_timeout_s=CALL_TIMEOUT_S, ssl=client_tls()
        ) as client:
            return await call(client)

    try:
        return asyncio.run(main())
    except PhalanxError as exc:
        _exit_for(exc, write=write)
        raise  # unreachable: _exit_for exits


def _exit_for(exc: PhalanxError, *, write: bool) -> None:
    unknown = write and outcome_of(exc) == Outcome.INDETERMINATE
    note = " (the outcome is unknown: the request may or may not have been applied)"
    click.echo(f"Error: {type(exc).__name__}: {exc}{note if unknown else ''}", err=True)
    sys.exit(EXIT_INDETERMINATE if unknown else 1)


def _kv_json(kv: Any, hex_mode: bool) -> dict[str, Any]:
    return {
        "key": _decode(kv.key, hex_mode),
        "value": _decode(kv.value, hex_mode),
        "create_revision": kv.create_revision,
        "mod_revision": kv.mod_revision,
        "version": kv.version,
        "lease": kv.lease,
    }


@click.group()
def kv() -> None:
    """Read and write the key-value store (put, get, del, txn, watch, compact, lease)."""


@kv.command()
@click.argument("key")
@click.argument("value")
@click.option("--lease", "lease_id", type=int, default=0, help="Attach the key to this lease.")
@_hex_option
@_endpoints_option
def put(key: str, value: str, lease_id: int, hex_mode: bool, endpoints: str | None) -> None:
    """Set KEY to VALUE; prints the write's revision."""
    key_bytes, value_bytes = _encode(key, hex_mode), _encode(value, hex_mode, "VALUE")

    async def call(client: Any) -> int:
        return int(await client.put(key_bytes, value_bytes, lease=lease_id))

    revision = _call(endpoints, call)
    click.echo(f"OK revision {revision}")


@kv.command()
@click.argument("key")
@click.option("--prefix", is_flag=True, help="Every key starting with KEY.")
@click.option(
    "--rev", "revision", type=click.IntRange(min=0), default=0, help="Read at a revision."
)
@click.option("--limit", type=click.IntRange(min=0), default=0, help="At most this many keys.")
@click.option(
    "--serializable",
    is_flag=True,
    help="Read one node's local state: faster, works in a minority, possibly stale.",
)
@click.option("--print-value-only", is_flag=True, help="Only the values, one per line.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON with revisions and versions.")
@_hex_option
@_endpoints_option
def get(
    key: str,
    prefix: bool,
    revision: int,
    limit: int,
    serializable: bool,
    print_value_only: bool,
    as_json: bool,
    hex_mode: bool,
    endpoints: str | None,
) -> None:
    """Read KEY (or the keys under a prefix): each key, then its value, one per line."""
    key_bytes = _encode(key, hex_mode)

    async def call(client: Any) -> Any:
        return await client.range(
            key_bytes,
            prefix=prefix,
            revision=revision,
            limit=limit,
            linearizable=not serializable,
        )

    result = _call(endpoints, call, write=False)
    if as_json:
        document = {
            "revision": result.revision,
            "count": result.count,
            "more": result.more,
            "stale": result.stale,
            "kvs": [_kv_json(item, hex_mode) for item in result.kvs],
        }
        click.echo(json.dumps(document, indent=2))
        return
    for item in result.kvs:
        if not print_value_only:
            click.echo(_decode(item.key, hex_mode))
        click.echo(_decode(item.value, hex_mode))


@kv.command("del")
@click.argument("key")
@click.option("--prefix", is_flag=True, help="Every key starting with KEY.")
@_hex_option
@_endpoints_option
def delete(key: str, prefix: bool, hex_mode: bool, endpoints: str | None) -> None:
    """Delete KEY (or every key under a prefix); prints how many keys were deleted."""
    key_bytes = _encode(key, hex_mode)

    async def call(client: Any) -> int:
        return int(await client.delete(key_bytes, prefix=prefix))

    click.echo(str(_call(endpoints, call)))


@kv.command()
@click.option(
    "--file",
    "path",
    type=click.File("r"),
    default="-",
    help="Read the transaction from this file (default: stdin).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@_hex_option
@_endpoints_option
def txn(path: Any, as_json: bool, hex_mode: bool, endpoints: str | None) -> None:
    """Run a transaction: compares, a blank line, operations if they hold, a blank line,
    operations otherwise (see docs/cli.md for the format).

    \b
    value("app/mode") = "blue"

    \b
    put app/mode green

    \b
    get app/mode
    """
    from phalanx.cli.txn_text import TxnTextError, parse_txn

    try:
        parsed = parse_txn(path.read(), hex_mode=hex_mode)
    except TxnTextError as exc:
        raise click.ClickException(str(exc)) from None

    async def call(client: Any) -> Any:
        return await client.txn(parsed.compare, parsed.success, parsed.failure)

    result = _call(endpoints, call)
    answers = [_op_result(r, hex_mode) for r in result.responses]
    if as_json:
        document = {"succeeded": result.succeeded, "revision": result.revision, "ops": answers}
        click.echo(json.dumps(document, indent=2))
        return
    click.echo("SUCCESS" if result.succeeded else "FAILURE")
    for answer in answers:
        click.echo()
        if answer["op"] == "put":
            click.echo(f"OK revision {answer['revision']}")
        elif answer["op"] == "del":
            click.echo(str(answer["deleted"]))
        else:
            for item in answer["kvs"]:
                click.echo(item["key"])
                click.echo(item["value"])


def _op_result(response: Any, hex_mode: bool) -> dict[str, Any]:
    from phalanx.kv.responses import DeleteResult, PutResult

    if isinstance(response, PutResult):
        return {"op": "put", "revision": response.revision}
    if isinstance(response, DeleteResult):
        return {"op": "del", "deleted": response.deleted}
    return {
        "op": "get",
        "count": response.count,
        "more": response.more,
        "kvs": [_kv_json(item, hex_mode) for item in response.kvs],
    }


@kv.command()
@click.argument("key")
@click.option("--prefix", is_flag=True, help="Every key starting with KEY.")
@click.option(
    "--rev",
    "revision",
    type=click.IntRange(min=0),
    default=0,
    help="Start at this revision (its past events first); default: from now.",
)
@click.option(
    "--count",
    type=click.IntRange(1, WATCH_COUNT_MAX),
    default=None,
    help="Exit after this many events (default: until Ctrl-C).",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per event and line.")
@_hex_option
@_endpoints_option
def watch(
    key: str,
    prefix: bool,
    revision: int,
    count: int | None,
    as_json: bool,
    hex_mode: bool,
    endpoints: str | None,
) -> None:
    """Print every change of KEY (or of the keys under a prefix) as it happens: the event
    (PUT or DELETE), the key, the value."""
    key_bytes = _encode(key, hex_mode)

    async def call(client: Any) -> int:
        seen = 0
        async for event in client.watch(key_bytes, prefix=prefix, start_revision=revision):
            if as_json:
                line = {
                    "type": event.type,
                    "revision": event.revision,
                    **_kv_json(event.kv, hex_mode),
                }
                click.echo(json.dumps(line))
            else:
                click.echo(event.type.upper())
                click.echo(_decode(event.key, hex_mode))
                if event.type == "put":
                    click.echo(_decode(event.value, hex_mode))
            sys.stdout.flush()
            seen += 1
            if count is not None and seen >= count:
                break
        return seen

    try:
        _call(endpoints, call, write=False)
    except KeyboardInterrupt:
        sys.exit(130)


@kv.command()
@click.argument("revision", type=click.IntRange(min=1))
@_endpoints_option
def compact(revision: int, endpoints: str | None) -> None:
    """Forget the history below REVISION (older reads and watches then fail)."""

    async def call(client: Any) -> None:
        await client.compact(revision)

    _call(endpoints, call)
    click.echo(f"compacted revision {revision}")


@kv.group()
def lease() -> None:
    """Leases: keys attached to one go when it expires or is revoked."""


@lease.command()
@click.argument("ttl_s", type=click.FloatRange(min=0.001))
@_endpoints_option
def grant(ttl_s: float, endpoints: str | None) -> None:
    """Grant a lease of TTL_S seconds; prints its id."""

    async def call(client: Any) -> int:
        return int(await client.grant(ttl_s))

    lease_id = _call(endpoints, call)
    click.echo(f"lease {lease_id} granted with TTL {ttl_s:g}s")


@lease.command()
@click.argument("lease_id", type=int)
@_endpoints_option
def revoke(lease_id: int, endpoints: str | None) -> None:
    """Revoke a lease now; its keys are deleted."""

    async def call(client: Any) -> None:
        await client.revoke(lease_id)

    _call(endpoints, call)
    click.echo(f"lease {lease_id} revoked")


@lease.command("keep-alive")
@click.argument("lease_id", type=int)
@click.option("--once", is_flag=True, help="Renew once and exit (default: until Ctrl-C).")
@_endpoints_option
def keep_alive(lease_id: int, once: bool, endpoints: str | None) -> None:
    """Keep a lease alive: renew it every third of its TTL."""

    async def call(client: Any) -> None:
        while True:
            ttl_s = float(await client.keep_alive(lease_id))
            click.echo(f"lease {lease_id} kept alive with TTL {ttl_s:g}s")
            sys.stdout.flush()
            if once:
                return
            await asyncio.sleep(max(ttl_s / 3, 0.01))

    try:
        _call(endpoints, call)
    except KeyboardInterrupt:
        sys.exit(130)
