from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import anyio
import pytest

from amoconnect.errors import StoreError
from amoconnect.store.base import NewJob
from amoconnect.store.sqlite import SQLiteStore

pytestmark = pytest.mark.anyio


def job(key: str, payload: bytes = b"x", *, kind: str = "test", delay: float = 0.0) -> NewJob:
    return NewJob(kind=kind, key=key, payload=payload, scope_id="scope", delay=delay)


@pytest.fixture
async def store(tmp_path: Path):  # type: ignore[no-untyped-def]
    async with SQLiteStore(tmp_path / "store.sqlite3") as s:
        yield s


async def test_concurrent_enqueues_share_commits(store: SQLiteStore) -> None:
    before = store.commits

    async def one(i: int) -> None:
        assert await store.enqueue([job(f"k{i}")], dedup=[f"d{i}"])

    async with anyio.create_task_group() as tg:
        for i in range(200):
            tg.start_soon(one, i)
    assert (await store.counts())["queued"] == 200
    assert store.commits - before < 200  # grouped: fewer fsyncs than writes


async def test_closed_store_refuses(tmp_path: Path) -> None:
    s = SQLiteStore(tmp_path / "x.sqlite3")
    with pytest.raises(StoreError, match="not open"):
        await s.claim(1)


def test_bad_synchronous_setting(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="synchronous"):
        SQLiteStore(tmp_path / "x", synchronous="OFF")


WRITER = textwrap.dedent(
    """
    import anyio, sys
    from amoconnect.store.sqlite import SQLiteStore
    from amoconnect.store.base import NewJob

    async def main():
        async with SQLiteStore(sys.argv[1]) as store:
            i = 0
            while True:
                ok = await store.enqueue([NewJob("t", f"k{i % 7}", str(i).encode())], dedup=[f"d{i}"])
                assert ok
                print(i, flush=True)  # acknowledged only after the commit
                i += 1

    anyio.run(main)
    """
)


async def test_acknowledged_writes_survive_kill_9(tmp_path: Path) -> None:
    path = tmp_path / "crash.sqlite3"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    acked = -1
    assert proc.stdout is not None
    deadline = time.monotonic() + 20
    while acked < 300 and time.monotonic() < deadline:
        acked = int(proc.stdout.readline())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    async with SQLiteStore(path) as store:
        counts = await store.counts()
        assert counts["queued"] >= acked + 1
        # Every acknowledged job is there, once, and the dedup keys still refuse replays.
        assert not await store.enqueue([job("x")], dedup=[f"d{acked}"])
    with sqlite3.connect(path) as conn:
        payloads = [int(p) for (p,) in conn.execute("SELECT payload FROM queue")]
    assert len(payloads) == len(set(payloads))
    assert set(range(acked + 1)) <= set(payloads)


async def test_a_failing_operation_fails_alone_in_its_batch(store: SQLiteStore) -> None:
    def broken(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO dedup VALUES ('x', 1)")
        conn.execute("INSERT INTO no_such_table VALUES (1)")

    results: dict[str, object] = {}

    async def enqueue(i: int) -> None:
        results[f"job{i}"] = await store.enqueue([job(f"k{i}")], dedup=[f"d{i}"])

    async def fail() -> None:
        try:
            await store._call(broken)
        except sqlite3.OperationalError as exc:
            results["broken"] = exc

    async with anyio.create_task_group() as tg:
        for i in range(5):
            tg.start_soon(enqueue, i)
        tg.start_soon(fail)
        for i in range(5, 10):
            tg.start_soon(enqueue, i)
    assert isinstance(results.pop("broken"), sqlite3.OperationalError)
    assert all(results.values())
    assert (await store.counts())["queued"] == 10
    # The failed operation's own first write was rolled back with it.
    assert await store.enqueue([job("x")], dedup=["x"])


async def test_a_write_waits_for_another_process_lock_without_blocking_the_loop(store: SQLiteStore) -> None:
    other = sqlite3.connect(store.path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # e.g. a CLI command writing to the same file
    ticks = 0
    done = anyio.Event()

    async def tick() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await anyio.sleep(0.01)

    async def release() -> None:
        await anyio.sleep(0.3)
        other.execute("COMMIT")

    async with anyio.create_task_group() as tg:
        tg.start_soon(tick)
        tg.start_soon(release)
        started = time.monotonic()
        assert await store.enqueue([job("a")], dedup=["locked"])
        waited = time.monotonic() - started
        done.set()
    other.close()
    assert waited >= 0.25
    assert ticks >= 10  # the loop kept running while the write waited for the lock
    assert (await store.counts())["queued"] == 1


async def test_a_version_1_file_gains_the_button_data_table_on_open(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as conn:  # what version 1 created, in short
        conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        conn.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    async with SQLiteStore(path) as store:
        await store.put_button_data("~b:key", "x" * 100, 60)
        assert await store.button_data("~b:key") == "x" * 100
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == ("2",)
