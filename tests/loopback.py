"""Free TCP ports on 127.0.0.1 for the servers and clusters the tests start.

Importable from any test module (``from loopback import free_ports``): pytest puts ``tests/``
on ``sys.path`` (``pythonpath`` in pyproject.toml).
"""

from __future__ import annotations

import socket


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports the OS had free a moment ago (all bound at once, then freed)."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_port() -> int:
    return free_ports(1)[0]
