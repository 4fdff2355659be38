"""A running Raft node: the asyncio driver that joins the Raft core (``phalanx.raft``), durable
storage (``phalanx.storage``), the peer transport (``phalanx.net``) and the key-value state
machine (``phalanx.kv``). See ``docs/node.md``.
"""

from phalanx.node.driver import RaftNode

__all__ = ["RaftNode"]
