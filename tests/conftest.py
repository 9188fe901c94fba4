from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from amoconnect.store.base import Store
from amoconnect.store.sqlite import SQLiteStore

# tests/ holds helpers (rig.py) and the test messenger (messengers/), imported by name.
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def postgres() -> str:
    """A PostgreSQL database URL for tests (``AMOCONNECT_TEST_POSTGRES``); skipped without one.

    CI sets ``AMOCONNECT_REQUIRE_POSTGRES=1`` so that a missing server fails instead of skipping.
    """
    from amoconnect.testing.stores import POSTGRES_ENV, postgres_url

    url = postgres_url()
    if url is None:
        if os.environ.get("AMOCONNECT_REQUIRE_POSTGRES"):
            pytest.fail(f"{POSTGRES_ENV} is not set but AMOCONNECT_REQUIRE_POSTGRES is")
        pytest.skip(f"set {POSTGRES_ENV} to a PostgreSQL URL to run the PostgreSQL tests")
    return url


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """An open store of each backend in turn: SQLite, then (with a server) a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        async with SQLiteStore(tmp_path / "store.sqlite3") as s:
            yield s
        return
    from amoconnect.store.postgres import PostgresStore
    from amoconnect.testing.stores import fresh_postgres_schema

    # A short lease, as the test kit's store settings have: a job left by its holder comes back in seconds.
    async with PostgresStore(fresh_postgres_schema(request.getfixturevalue("postgres")), lease=3.0) as p:
        yield p
