"""The connector's data files are its user's alone (0600, directories 0700), whatever the umask."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from amoconnect.media import MediaStore
from amoconnect.store.base import NewJob
from amoconnect.store.sqlite import SQLiteStore

pytestmark = pytest.mark.anyio


@pytest.fixture
def open_umask() -> Iterator[None]:
    """umask 000: whatever is created is as open as the code asks for."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def modes(directory: Path) -> dict[str, int]:
    return {path.name: mode(path) for path in directory.iterdir()}


@pytest.mark.usefixtures("open_umask")
async def test_sqlite_files_are_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "data" / "store.sqlite3"
    async with SQLiteStore(path) as store:
        assert await store.enqueue([NewJob("test", "k", b"x", "scope")], dedup=["d"])
        assert modes(path.parent) == {
            "store.sqlite3": 0o600,
            "store.sqlite3-wal": 0o600,
            "store.sqlite3-shm": 0o600,
            "store.sqlite3.lock": 0o600,
        }
    assert mode(tmp_path / "data") == 0o700


@pytest.mark.usefixtures("open_umask")
async def test_media_files_are_owner_only(tmp_path: Path) -> None:
    media = MediaStore(tmp_path / "media", "a-media-secret-of-enough-length")
    file_id, _ = await media.put(b"<html>", content_type="text/html", file_name="page.html")
    assert mode(tmp_path / "media") == 0o700
    assert modes(tmp_path / "media") == {file_id: 0o600, f"{file_id}.json": 0o600}
