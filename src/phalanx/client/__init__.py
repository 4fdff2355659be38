"""The Phalanx client: ``Client`` (blocking) and ``AsyncClient`` (asyncio). See
``docs/client.md``."""

from phalanx.client.client import AsyncClient, Client, parse_endpoint

__all__ = ["AsyncClient", "Client", "parse_endpoint"]
