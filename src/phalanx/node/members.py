"""Where each member of the cluster listens, kept in step with the Raft configuration.

The configuration (who votes, who learns) is Raft's; the addresses are data. A member's
addresses are stored in the replicated keyspace under :data:`MEMBERS_PREFIX` + its id, written
through the log *before* the membership change that adds it, so when any node applies the
change it already holds the address. Members of the initial cluster come from the command
line (``--cluster``) and need no key.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

import msgspec

from phalanx.kv import KVStore
from phalanx.kv.commands import prefix_end
from phalanx.node.client_protocol import MemberInfo
from phalanx.node.cluster_spec import Address, parse_address
from phalanx.raft.types import ConfState

__all__ = ["MEMBERS_PREFIX", "Membership", "format_address", "member_key"]

#: The keys holding members' addresses (values: msgpack ``MemberInfo``).
MEMBERS_PREFIX: Final = b"__phalanx/members/"

_encoder: Final = msgspec.msgpack.Encoder()
_decoder: Final = msgspec.msgpack.Decoder(MemberInfo)


def member_key(node_id: int) -> bytes:
    return MEMBERS_PREFIX + str(node_id).encode()


def format_address(address: Address) -> str:
    return f"{address[0]}:{address[1]}"


def encode_member(info: MemberInfo) -> bytes:
    return _encoder.encode(info)


class Membership:
    """The members this node knows, their addresses and roles."""

    def __init__(
        self, self_id: int, peers: Mapping[int, Address], clients: Mapping[int, Address]
    ) -> None:
        self._self_id = self_id
        self._static: dict[int, MemberInfo] = {}
        for node_id in sorted({self_id, *peers, *clients}):
            peer = peers.get(node_id)
            client = clients.get(node_id)
            self._static[node_id] = MemberInfo(
                node_id,
                format_address(peer) if peer else "",
                format_address(client) if client else "",
            )
        self._members: dict[int, MemberInfo] = dict(self._static)

    def members(self) -> tuple[MemberInfo, ...]:
        return tuple(self._members[i] for i in sorted(self._members))

    def client_address(self, node_id: int) -> Address | None:
        info = self._members.get(node_id) or self._static.get(node_id)
        if info is None or not info.client:
            return None
        return parse_address(info.client)

    def set_client_address(self, node_id: int, address: Address) -> None:
        info = self._members.get(node_id, MemberInfo(node_id))
        self._members[node_id] = msgspec.structs.replace(info, client=format_address(address))
        self._static[node_id] = self._members[node_id]

    def sync(self, conf: ConfState, store: KVStore) -> dict[int, Address]:
        """Recompute the members from ``conf`` and the stored addresses; return the peer
        addresses of every other member (what the transport should dial).

        An empty configuration (a node waiting to join) keeps the static members.
        """
        stored: dict[int, MemberInfo] = {}
        result = store.get(MEMBERS_PREFIX, prefix_end(MEMBERS_PREFIX))
        for kv in result.kvs:
            try:
                info = _decoder.decode(kv.value)
            except msgspec.DecodeError:
                continue  # not written by a node: ignore rather than fail the apply loop
            stored[info.node_id] = info
        ids = set(conf.voters) | set(conf.learners)
        if ids:
            members: dict[int, MemberInfo] = {}
            for node_id in sorted(ids | set(conf.voters_outgoing)):
                info = stored.get(node_id) or self._static.get(node_id) or MemberInfo(node_id)
                members[node_id] = msgspec.structs.replace(info, learner=node_id in conf.learners)
            self._members = members
        return {
            node_id: parse_address(info.peer)
            for node_id, info in self._members.items()
            if node_id != self._self_id and info.peer
        }
