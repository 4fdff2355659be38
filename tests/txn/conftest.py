"""Fixtures of the transaction tests: two PostgreSQL servers that allow prepared transactions.

Two servers, not two databases on one, so that a test can crash one participant's server
while the other keeps running. Started once per session, only when a test asks for them.
``tpc`` is the helper module ``tpc_servers.py`` (crash, restart, create_database).
``saga_services`` is ``saga_services.py``, which the saga crash child imports too.
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest


def _load(name: str, filename: str) -> ModuleType:
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(filename))
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="session")
def tpc() -> ModuleType:
    return _load("phalanx_tests_tpc", "tpc_servers.py")


@pytest.fixture(scope="session")
def saga_services() -> ModuleType:
    """``saga_services.py``: the order saga of the crash tests and its fake services."""
    return _load("saga_services", "saga_services.py")


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
        # Stopped side by side: each stop waits for its server to go away.
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda server: server.stop(), servers))
