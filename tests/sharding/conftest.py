"""Fixtures of the sharding tests: fresh PostgreSQL databases on the session's server."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest


@pytest.fixture
def make_pg_database(postgres_server: Any) -> Callable[[], str]:
    """Create a new database on the session's server and return its conninfo."""

    def create() -> str:
        name = f"shard_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(postgres_server.dsn, autocommit=True) as admin:
            admin.execute(f"CREATE DATABASE {name}")
        return str(postgres_server.dsn).replace("dbname=postgres", f"dbname={name}")

    return create


@pytest.fixture
def pg_dsn(make_pg_database: Callable[[], str]) -> str:
    return make_pg_database()
