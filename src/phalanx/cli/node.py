"""``phalanx node``: run one cluster member until SIGTERM or SIGINT."""

from __future__ import annotations

from typing import Literal

import click

from phalanx.node.cluster_spec import Address, is_loopback, parse_address, parse_cluster

# Kept here rather than imported from phalanx.node.logs: `phalanx --help` stays light.
_LOG_FORMATS = ("text", "json")
_LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def _address(_ctx: click.Context, _param: click.Parameter, value: str) -> Address:
    try:
        return parse_address(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _optional_address(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> Address | None:
    return None if value is None else _address(ctx, param, value)


@click.command()
@click.option("--id", "node_id", required=True, type=click.IntRange(min=1), help="This node's id.")
@click.option(
    "--data-dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Directory of the node's log and snapshots (created if missing).",
)
@click.option(
    "--peer-listen", required=True, callback=_address, help="host:port for Raft peer traffic."
)
@click.option(
    "--client-listen", required=True, callback=_address, help="host:port for client requests."
)
@click.option(
    "--cluster",
    "cluster_spec",
    required=True,
    help="Every member as ID=PEER_HOST:PORT/CLIENT_HOST:PORT, comma-separated.",
)
@click.option("--cluster-id", default="phalanx", show_default=True, help="Cluster name.")
@click.option(
    "--tick-ms",
    default=100,
    show_default=True,
    type=click.IntRange(1, 10_000),
    help="Raft tick; the election timeout is 10 to 20 ticks.",
)
@click.option(
    "--fsync/--no-fsync",
    default=True,
    show_default=True,
    help="fdatasync the log before acknowledging. --no-fsync survives process crashes but "
    "may lose acknowledged writes on an OS crash or power loss: for benchmarks only.",
)
@click.option(
    "--join",
    is_flag=True,
    help="Join a running cluster: start with no membership and wait for the leader, which "
    "must have added this node (`phalanx cluster member add`). --cluster lists every member, "
    "this one included. Ignored once the data dir holds a log.",
)
@click.option(
    "--http-listen",
    callback=_optional_address,
    help="host:port serving /healthz, /startup, /ready and /metrics (default: not served).",
)
@click.option(
    "--admin",
    is_flag=True,
    help="Also serve /admin/faults on --http-listen, to cut and degrade this node's links "
    "(chaos testing). Only on a loopback --http-listen: never expose it beyond this machine.",
)
@click.option(
    "--log-format",
    type=click.Choice(_LOG_FORMATS),
    default="text",
    show_default=True,
    help="Logs on stderr: text for people, json for one JSON object per line.",
)
@click.option(
    "--log-level",
    type=click.Choice(_LOG_LEVELS, case_sensitive=False),
    default="info",
    show_default=True,
    help="Lowest level of the records logged.",
)
@click.option(
    "--tls-cert",
    type=click.Path(dir_okay=False),
    help="PEM certificate: TLS for peers and clients.",
)
@click.option("--tls-key", type=click.Path(dir_okay=False), help="PEM private key of --tls-cert.")
@click.option(
    "--tls-ca", type=click.Path(dir_okay=False), help="PEM CA that signs every member's cert."
)
@click.option(
    "--tls-mutual",
    is_flag=True,
    help="Require a certificate signed by --tls-ca from every peer and client (mutual TLS).",
)
def node(
    node_id: int,
    data_dir: str,
    peer_listen: Address,
    client_listen: Address,
    cluster_spec: str,
    cluster_id: str,
    tick_ms: int,
    fsync: bool,
    join: bool,
    http_listen: Address | None,
    admin: bool,
    log_format: Literal["text", "json"],
    log_level: str,
    tls_cert: str | None,
    tls_key: str | None,
    tls_ca: str | None,
    tls_mutual: bool,
) -> None:
    """Run one Phalanx node until SIGTERM or SIGINT."""
    from phalanx.node.process import run_node

    try:
        members = parse_cluster(cluster_spec)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--cluster") from None
    if node_id not in members:
        raise click.BadParameter(f"node {node_id} is not listed", param_hint="--cluster")
    if admin and (http_listen is None or not is_loopback(http_listen[0])):
        raise click.UsageError("--admin needs --http-listen on a loopback address")
    tls = None
    if tls_cert or tls_key or tls_ca:
        if not (tls_cert and tls_key and tls_ca):
            raise click.UsageError("TLS needs all of --tls-cert, --tls-key and --tls-ca")
        from pathlib import Path

        from phalanx.net.tls import TlsFiles

        tls = TlsFiles(Path(tls_cert), Path(tls_key), Path(tls_ca), mutual=tls_mutual)
    elif tls_mutual:
        raise click.UsageError("--tls-mutual needs --tls-cert, --tls-key and --tls-ca")
    run_node(
        node_id,
        data_dir,
        peer_listen=peer_listen,
        client_listen=client_listen,
        members=members,
        cluster_id=cluster_id,
        tick_interval_s=tick_ms / 1000,
        fsync=fsync,
        join=join,
        http_listen=http_listen,
        log_format=log_format,
        log_level=log_level,
        tls=tls,
        admin=admin,
    )
