"""Fixtures of the transaction tests: two PostgreSQL servers that allow prepared transactions.

Two servers, not two databases on one, so that a test can crash one participant's server
while the other keeps running. Started once per session, only when a test asks for them.
``tpc`` is the helper module ``tpc_servers.py`` (crash, restart, create_database).
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest


def _load_tpc() -> ModuleType:
    name = "phalanx_tests_tpc"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, Path(__file__).with_name("tpc_servers.py")
        )
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="session")
def tpc() -> ModuleType:
    return _load_tpc()


@pytest.fixture(scope="session")
def tpc_pair(tpc: ModuleType) -> Iterator[tuple[Any, Any]]:
    servers: list[Any] = []
    try:
        try:
            servers.append(tpc.start_tpc_server())
            servers.append(tpc.start_tpc_server())
        except tpc.pg.PostgresUnavailable as exc:
            pytest.fail(f"cannot start the 2PC test PostgreSQL servers: {exc}", pytrace=False)
        yield servers[0], servers[1]
    finally:
        for server in servers:
            server.stop()
