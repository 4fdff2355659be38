"""The Phalanx client: ``Client`` (blocking) and ``AsyncClient`` (asyncio), and the
coordination recipes built on them: locks with fencing tokens, leader election and typed
configuration. See ``docs/client.md`` and ``docs/coordination.md``."""

from phalanx.client.client import AsyncClient, parse_endpoint
from phalanx.client.config import ConfigStore, InvalidConfig, Reloader
from phalanx.client.election import Election, Leader, Leadership, LeadershipLost, SyncElection
from phalanx.client.fencing import FencedResource, SqliteFencedResource, StaleToken
from phalanx.client.lock import Held, LeaseLost, Lock, NotAcquired, SyncLock, TooManyContenders
from phalanx.client.results import GetResult, KeyValue, WatchEvent
from phalanx.client.sync import Client

__all__ = [
    "AsyncClient",
    "Client",
    "ConfigStore",
    "Election",
    "FencedResource",
    "GetResult",
    "Held",
    "InvalidConfig",
    "KeyValue",
    "Leader",
    "Leadership",
    "LeadershipLost",
    "LeaseLost",
    "Lock",
    "NotAcquired",
    "Reloader",
    "SqliteFencedResource",
    "StaleToken",
    "SyncElection",
    "SyncLock",
    "TooManyContenders",
    "WatchEvent",
    "parse_endpoint",
]
