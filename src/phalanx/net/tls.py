"""TLS settings for peer and client traffic, from PEM files.

One :class:`TlsFiles` describes a node's certificate, its key and the CA that signs every
member's certificate. ``server_context()`` is for listeners (peer and client); with
``mutual=True`` it requires and verifies the other side's certificate. ``client_context()``
verifies the server against the CA and presents this node's certificate, which a mutual-TLS
listener requires.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

__all__ = ["TlsFiles"]


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path
    ca: Path
    mutual: bool = False

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert, self.key)
        if self.mutual:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(self.ca)
        return context

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert, self.key)
        return context
