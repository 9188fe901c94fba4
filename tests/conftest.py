from __future__ import annotations

import sys
from pathlib import Path

import pytest

# tests/ holds helpers (rig.py) and the test messenger (messengers/), imported by name.
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
