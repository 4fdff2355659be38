"""Sharding strategies behind one interface, built by :func:`strategy`.

=============  ==========================================================  ==================
name           placement                                                   class
=============  ==========================================================  ==================
``range``      contiguous key ranges; split and merge                      RangeStrategy
``hash``       ``hash(key) % N``                                           ModuloStrategy
``jump``       jump consistent hash                                        JumpStrategy
``ring``       consistent-hash ring with virtual nodes                     RingStrategy
``bounded``    the ring with bounded loads                                 BoundedLoadStrategy
``rendezvous`` highest random weight                                       RendezvousStrategy
``geo``        region groups (``"<region>/<name>"`` shards), jump inside     GeoStrategy
``directory``  ``key -> shard`` table in a store, cached by clients        DirectoryStrategy
=============  ==========================================================  ==================
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Final

from phalanx.sharding.strategies.base import SHARDS_MAX, Strategy
from phalanx.sharding.strategies.directory import DirectoryStrategy
from phalanx.sharding.strategies.geo import GeoStrategy
from phalanx.sharding.strategies.hashing import JumpStrategy, ModuloStrategy, jump_hash
from phalanx.sharding.strategies.range import RangeStrategy
from phalanx.sharding.strategies.rendezvous import RendezvousStrategy
from phalanx.sharding.strategies.ring import BoundedLoadStrategy, RingStrategy

__all__ = [
    "SHARDS_MAX",
    "STRATEGY_NAMES",
    "BoundedLoadStrategy",
    "DirectoryStrategy",
    "GeoStrategy",
    "JumpStrategy",
    "ModuloStrategy",
    "RangeStrategy",
    "RendezvousStrategy",
    "RingStrategy",
    "Strategy",
    "jump_hash",
    "strategy",
]

_BUILDERS: Final[dict[str, Callable[..., Strategy]]] = {
    "range": RangeStrategy,
    "hash": ModuloStrategy,
    "jump": JumpStrategy,
    "ring": RingStrategy,
    "bounded": BoundedLoadStrategy,
    "rendezvous": RendezvousStrategy,
    "geo": GeoStrategy,
    "directory": DirectoryStrategy,
}

#: Every name :func:`strategy` accepts.
STRATEGY_NAMES: Final = tuple(_BUILDERS)


def strategy(name: str, shards: Iterable[str], **options: Any) -> Strategy:
    """Build the strategy called ``name`` over ``shards`` with its ``options``.

    Unknown names raise ``ValueError`` listing the known ones; unknown options raise
    ``TypeError`` naming the option.
    """
    builder = _BUILDERS.get(name)
    if builder is None:
        raise ValueError(f"strategy: unknown name {name!r}; expected one of {STRATEGY_NAMES}")
    return builder(shards, **options)
