"""Parsing of member lists: ``ID=PEER_HOST:PORT/CLIENT_HOST:PORT,...``."""

from __future__ import annotations

import ipaddress
from typing import NamedTuple

__all__ = ["Address", "Member", "format_address", "is_loopback", "parse_address", "parse_cluster"]

Address = tuple[str, int]


class Member(NamedTuple):
    peer: Address
    client: Address


def parse_address(text: str) -> Address:
    """``"host:port"`` as ``(host, port)``; ValueError when it is not one."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"{text!r}: expected host:port")
    return (host.strip("[]"), int(port))


def format_address(address: Address) -> str:
    """``(host, port)`` as ``"host:port"`` (``"[::1]:port"`` for IPv6)."""
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (``localhost`` or a loopback IP)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_cluster(text: str) -> dict[int, Member]:
    """``"1=h:p/h:p,2=..."`` as ``{id: Member(peer, client)}``; ValueError when malformed."""
    members: dict[int, Member] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, addresses = item.partition("=")
        peer, slash, client = addresses.partition("/")
        if not sep or not slash or not name.strip().isdigit() or int(name) < 1:
            raise ValueError(f"{item!r}: expected ID=PEER_HOST:PORT/CLIENT_HOST:PORT")
        node_id = int(name)
        if node_id in members:
            raise ValueError(f"node {node_id} is listed twice")
        members[node_id] = Member(parse_address(peer), parse_address(client))
    if not members:
        raise ValueError("the cluster lists no member")
    return members
