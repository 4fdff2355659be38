"""Where the commands that talk to a cluster find its client endpoints.

In order: the ``--endpoints host:port,...`` option, then ``$PHALANX_ENDPOINTS`` (same form),
then the ``"endpoints"`` list of ``./.phalanx/cluster.json``, which ``phalanx cluster up``
writes for a local cluster (so commands run from the same folder need no flags). When none
gives an endpoint the command stops with a usage error that says all three.

TLS: when ``$PHALANX_TLS_CA`` names a CA file, the commands connect with TLS and verify the
nodes against it; ``$PHALANX_TLS_CERT`` and ``$PHALANX_TLS_KEY`` add a client certificate for
nodes that require mutual TLS (``phalanx node --tls-mutual``).
"""

from __future__ import annotations

import json
import os
import ssl
from pathlib import Path
from typing import Final

import click

from phalanx.client.client import parse_endpoint
from phalanx.errors import BadRequest

__all__ = [
    "CLUSTER_FILE_DEFAULT",
    "ENDPOINTS_ENV",
    "ENDPOINTS_MAX",
    "client_tls",
    "resolve_endpoints",
]

ENDPOINTS_ENV: Final = "PHALANX_ENDPOINTS"
#: The record ``phalanx cluster up`` writes, relative to the working directory.
CLUSTER_FILE_DEFAULT: Final = Path(".phalanx") / "cluster.json"
#: Endpoints accepted from any one source.
ENDPOINTS_MAX: Final = 64
#: A cluster record larger than this is not one.
CLUSTER_FILE_BYTES_MAX: Final = 1 << 20


def _split(text: str, source: str) -> list[str]:
    endpoints = [part.strip() for part in text.split(",") if part.strip()]
    _check(endpoints, source)
    return endpoints


def _check(endpoints: list[str], source: str) -> None:
    if len(endpoints) > ENDPOINTS_MAX:
        raise click.UsageError(f"{source}: {len(endpoints)} endpoints > {ENDPOINTS_MAX}")
    for item in endpoints:
        try:
            parse_endpoint(item)
        except BadRequest as exc:
            raise click.UsageError(f"{source}: {exc}") from None


def _from_file(path: Path) -> list[str] | None:
    try:
        with path.open("rb") as file:
            data = file.read(CLUSTER_FILE_BYTES_MAX + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise click.UsageError(f"{path}: cannot read it: {exc}") from None
    if len(data) > CLUSTER_FILE_BYTES_MAX:
        raise click.UsageError(f"{path}: larger than {CLUSTER_FILE_BYTES_MAX} bytes")
    try:
        record = json.loads(data)
    except ValueError as exc:
        raise click.UsageError(f"{path}: not JSON: {exc}") from None
    endpoints = record.get("endpoints") if isinstance(record, dict) else None
    if not isinstance(endpoints, list) or not all(isinstance(e, str) for e in endpoints):
        raise click.UsageError(f'{path}: no "endpoints" list of "host:port" strings')
    if not endpoints:
        return None
    _check(endpoints, str(path))
    return endpoints


def resolve_endpoints(option: str | None, *, cluster_file: Path | str | None = None) -> list[str]:
    """The endpoints to use: ``option`` (the ``--endpoints`` value), else
    ``$PHALANX_ENDPOINTS``, else ``cluster_file``'s (default ``./.phalanx/cluster.json``)
    ``"endpoints"``. Raises ``click.UsageError`` naming the problem, or all three sources
    when none has an endpoint."""
    if option is not None and option.strip():
        return _split(option, "--endpoints")
    from_env = os.environ.get(ENDPOINTS_ENV, "")
    if from_env.strip():
        return _split(from_env, f"${ENDPOINTS_ENV}")
    path = Path(cluster_file) if cluster_file is not None else CLUSTER_FILE_DEFAULT
    from_file = _from_file(path)
    if from_file:
        return from_file
    raise click.UsageError(
        f"no cluster endpoints: pass --endpoints host:port,..., set ${ENDPOINTS_ENV}, "
        f"or run from the folder of a local cluster ({path} from `phalanx cluster up`)"
    )


def client_tls() -> ssl.SSLContext | None:
    """The TLS context ``$PHALANX_TLS_CA`` / ``_CERT`` / ``_KEY`` describe, or None (plain)."""
    ca = os.environ.get("PHALANX_TLS_CA", "").strip()
    cert = os.environ.get("PHALANX_TLS_CERT", "").strip()
    key = os.environ.get("PHALANX_TLS_KEY", "").strip()
    if not ca:
        if cert or key:
            raise click.UsageError("$PHALANX_TLS_CERT and $PHALANX_TLS_KEY need $PHALANX_TLS_CA")
        return None
    if bool(cert) != bool(key):
        raise click.UsageError("$PHALANX_TLS_CERT and $PHALANX_TLS_KEY go together")
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if cert:
            context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise click.UsageError(f"TLS files: {exc}") from None
    return context
