"""The file-backed media store: its retention."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from amoconnect.media import MediaStore

pytestmark = pytest.mark.anyio


async def test_prune_deletes_files_whose_links_all_expired(tmp_path: Path) -> None:
    media = MediaStore(tmp_path / "media", "a-media-secret-of-enough-length", ttl=3600)
    old, _ = await media.put(b"old", content_type="text/plain", file_name="old.txt")
    new, _ = await media.put(b"new", content_type="text/plain", file_name="new.txt")
    past = time.time() - 7200
    os.utime(tmp_path / "media" / old, (past, past))
    assert await media.prune() == 1
    assert await media.get(old) is None
    assert not (tmp_path / "media" / f"{old}.json").exists()
    assert (await media.get(new)) is not None
    assert await MediaStore(tmp_path / "none", "a-media-secret-of-enough-length").prune() == 0
