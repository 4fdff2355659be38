"""Test-wide settings and shared fixtures.

Hypothesis runs without its per-example deadline: the machines that run the suite are
small and shared, and a slow example is not a failure. Failures print a reproduction blob.

``postgres_server`` starts one throwaway PostgreSQL server for the session (see
``tests/pg.py``), only when a test asks for it. Missing PostgreSQL binaries fail those tests
rather than skip them: CI installs the binaries, so their absence is a broken setup.

``certs`` makes a test CA with the openssl command line (``tests/tls_certs.py``).

``redis_server`` does the same for a throwaway ``redis-server`` (see ``tests/redis_server.py``);
a missing binary fails the tests that ask for it, for the same reason.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import settings

settings.register_profile("phalanx", deadline=None, print_blob=True)
settings.load_profile("phalanx")


def _load_helper(name: str, filename: str) -> ModuleType:
    # The suite runs with --import-mode=importlib, so tests/ is not on sys.path: load the
    # helper by path, once, under a name test modules can find in sys.modules too.
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(filename))
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def _load_pg() -> ModuleType:
    return _load_helper("phalanx_tests_pg", "pg.py")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[object]:
    """A running ``tests/pg.py`` ``PgServer``; connect with its ``dsn``."""
    pg = _load_pg()
    problem = None
    try:
        server = pg.start_server()
    except pg.PostgresUnavailable as exc:
        problem = str(exc)
    if problem is not None:
        pytest.fail(f"cannot start the test PostgreSQL server: {problem}", pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[object]:
    """A running ``tests/redis_server.py`` ``RedisServer``; connect with its ``url``."""
    helper = _load_helper("phalanx_tests_redis", "redis_server.py")
    problem = None
    try:
        server = helper.start_server()
    except helper.RedisUnavailable as exc:
        problem = str(exc)
    if problem is not None:
        pytest.fail(f"cannot start the test Redis server: {problem}", pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> object:
    """A test CA and a node certificate for 127.0.0.1 (``tests/tls_certs.py``)."""
    if shutil.which("openssl") is None:
        pytest.fail("TLS tests need the openssl command line", pytrace=False)
    helper = _load_helper("phalanx_tests_tls", "tls_certs.py")
    return helper.make_certs(tmp_path_factory.mktemp("pki"))
