"""A cluster with mutual TLS on peer and client traffic."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest

from node_cluster import cluster, endpoint, leader_of
from phalanx.client import AsyncClient
from phalanx.errors import Indeterminate, Timeout, Unavailable
from phalanx.net.tls import TlsFiles


async def test_mutual_tls_cluster_serves_tls_clients_only(tmp_path: Path, certs: Any) -> None:
    tls = TlsFiles(certs.cert, certs.key, certs.ca, mutual=True)
    async with cluster(tmp_path, tls=tls) as nodes:
        await leader_of(nodes)
        endpoints = [endpoint(n) for n in nodes.values()]
        async with AsyncClient(endpoints, ssl=tls.client_context()) as client:
            await client.put(b"secret", b"1")
            assert await client.get(b"secret") == b"1"
        # Without a client certificate the node drops the connection (with TLS 1.3 the client
        # learns it only after sending): nothing is served.
        anonymous = ssl.create_default_context(cafile=str(certs.ca))
        async with AsyncClient(endpoints, ssl=anonymous, total_timeout_s=1) as client:
            with pytest.raises((Unavailable, Indeterminate, Timeout)):
                await client.get(b"secret")
        # A plain-text client gets nowhere either.
        async with AsyncClient(endpoints, total_timeout_s=1) as client:
            with pytest.raises((Unavailable, Indeterminate, Timeout)):
                await client.get(b"secret")
