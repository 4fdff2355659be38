"""The Phalanx client: ``Client`` (blocking) and ``AsyncClient`` (asyncio). See
``docs/client.md``."""

from phalanx.client.client import AsyncClient, parse_endpoint
from phalanx.client.results import GetResult, KeyValue, WatchEvent
from phalanx.client.sync import Client

__all__ = ["AsyncClient", "Client", "GetResult", "KeyValue", "WatchEvent", "parse_endpoint"]
