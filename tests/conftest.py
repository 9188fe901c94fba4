from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

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
