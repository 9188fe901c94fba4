"""A SQLite store whose files are deleted under a running ``amoconnect run``: it stops acknowledging."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import anyio
import httpx
import pytest
import tomli_w
from processes import connector
from rig import SCOPE, Rig, eventually, message, rig
from test_e2e_http import world

from amoconnect.errors import StoreError
from amoconnect.store.sqlite import SQLiteStore
from amoconnect.testing.stores import postgres_url

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(postgres_url() is not None, reason="the SQLite store's files"),
]


async def health(base_url: str) -> tuple[int, dict[str, object]]:
    async with httpx.AsyncClient() as client:
        answer = await client.get(f"{base_url}/healthz")
    return answer.status_code, answer.json()


async def _unhealthy(base_url: str) -> tuple[int, dict[str, object]] | None:
    answer = await health(base_url)
    return answer if answer[0] != 200 else None


async def test_deleted_store_files_make_webhooks_503_and_health_fail_and_lose_nothing_acknowledged(
    tmp_path: Path,
) -> None:
    async with world(amojo_delay=0.3) as w:  # amojo is slow: acknowledged messages wait in the queue
        data = w.config(tmp_path)
        config = tmp_path / "amoconnect.toml"
        config.write_text(tomli_w.dumps(data))
        db = Path(data["store"]["path"])
        async with connector(config, w.port):
            assert (await health(w.public))[0] == 200
            for i in range(8):
                assert await w.chat.client_writes("c1", f"before {i}") == 200
            await eventually(lambda: w.amojo.find_chat("bot:c1"))
            assert len(w.amojo.messages) < 8, "some acknowledged messages are still queued"
            for suffix in ("", "-wal", "-shm"):
                await anyio.Path(f"{db}{suffix}").unlink()

            assert await w.chat.client_writes("c1", "after") == 503  # the messenger will send it again
            manager = await w.amojo.emit_text(SCOPE, "bot:c1", "a manager's message")
            assert manager.status == 503
            # The probe's outcome is kept a second.
            status, body = await eventually(lambda: _unhealthy(w.public), within=5, interval=0.1)
            assert status == 503 and body["status"] == "store_unavailable"
            assert "deleted or replaced" in str(body["detail"])

            # What was acknowledged before is still relayed, from the files the process holds open.
            def from_client() -> list[str]:
                return [m.text for m in w.amojo.messages_in("bot:c1") if m.from_client]

            await eventually(lambda: len(from_client()) == 8, within=20)
            assert from_client() == [f"before {i}" for i in range(8)]
            assert w.chat.sent_to("c1") == []
            assert (await health(w.public))[0] == 503
        # Restarted, the connector makes a new store and takes webhooks again.
        async with connector(config, w.port):
            assert (await health(w.public))[0] == 200
            assert await w.chat.client_writes("c1", "after the restart") == 200
            await eventually(lambda: len(from_client()) == 9, within=20)


async def test_a_replaced_store_file_is_noticed_before_the_next_commit(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    async with SQLiteStore(path) as store:
        await store.probe()
        await anyio.Path(f"{path}-wal").unlink()
        await anyio.Path(path).rename(tmp_path / "old.sqlite3")
        await anyio.Path(path).write_bytes(b"")  # another file at the path
        with pytest.raises(StoreError, match="deleted or replaced"):
            await store.probe()
        with pytest.raises(StoreError, match="deleted or replaced"):
            await store.enqueue([])


async def test_a_full_disk_makes_health_and_webhooks_503(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with rig(tmp_path) as r:
        assert (await r.client.get("/healthz")).status_code == 200
        store = r.runtime.store
        assert isinstance(store, SQLiteStore)

        def full(conn: sqlite3.Connection) -> None:
            conn.execute("ROLLBACK")
            raise sqlite3.OperationalError("database or disk is full")

        monkeypatch.setattr(store, "_commit", full)
        answer = await eventually(lambda: _unhealthy_in_process(r), within=5, interval=0.1)  # the probe's second
        assert answer.status_code == 503 and "disk is full" in answer.json()["detail"]
        assert (await r.inbound(message("c1", "1"))).status_code == 503
        monkeypatch.undo()  # space again
        await eventually(lambda: _healthy(r), within=5, interval=0.1)
        assert (await r.inbound(message("c1", "1"))).status_code == 200


async def _healthy(r: Rig) -> bool:
    return (await r.client.get("/healthz")).status_code == 200


async def _unhealthy_in_process(r: Rig) -> httpx.Response | None:
    answer = await r.client.get("/healthz")
    return answer if answer.status_code == 503 else None
