from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import struct
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import msgspec
import pytest
import structlog

import amoconnect.store.sqlite as sqlite_module
from amoconnect.errors import StoreError
from amoconnect.store.base import ConversationRecord, MessageRecord, NewJob
from amoconnect.store.sql import NEXT_DUE, Finish
from amoconnect.store.sqlite import _CLAIM, _SCHEMA, SCHEMA_VERSION, SQLiteStore, _Committer

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


async def test_a_finished_large_job_s_freed_pages_are_not_written_again_as_zeros(store: SQLiteStore) -> None:
    """Some builds (Debian's) zero every freed page: the finish of a 400 KB job would write its ~100
    overflow pages once more. Zeroed only where it costs no write (secure_delete FAST), it writes a few."""
    await store.enqueue([job("k", os.urandom(400_000))])
    (claimed,) = await store.claim(1)
    wal = anyio.Path(f"{store.path}-wal")
    before = (await wal.stat()).st_size
    await store.finish(claimed.id)
    frames = ((await wal.stat()).st_size - before) // (4096 + 24)
    assert 0 < frames < 10


def _has_dbstat() -> bool:
    with contextlib.closing(sqlite3.connect(":memory:")) as db:
        try:
            db.execute("SELECT 1 FROM dbstat").fetchall()
        except sqlite3.OperationalError:
            return False
    return True


def _btrees_written(path: Path, since: int) -> list[str]:
    """The tables and indexes whose pages the WAL's frames after byte ``since`` hold (each frame: a
    24-byte header whose first four bytes are the page's number, then the page)."""
    data = Path(f"{path}-wal").read_bytes()
    (page_size,) = struct.unpack(">I", data[8:12])
    pages = {struct.unpack(">I", data[at : at + 4])[0] for at in range(since, len(data), 24 + page_size)}
    with contextlib.closing(sqlite3.connect(path)) as db:
        names = dict(db.execute("SELECT pageno, name FROM dbstat"))
    return sorted({names[page] for page in pages})


@pytest.mark.skipif(not _has_dbstat(), reason="maps pages to tables with SQLite's dbstat table")
async def test_a_job_writes_each_table_and_index_it_needs_and_no_other(store: SQLiteStore) -> None:
    """Every b-tree a job touches is a page written at its enqueue, its claim and its finish: the
    claims read ``heads`` (keyed by the job's key, no second index of it) and the counts ``queue_key``,
    so the queue has no index by state and due time to keep."""
    wal = anyio.Path(f"{store.path}-wal")
    written = []
    for step in ("enqueue", "claim", "finish"):
        since = (await wal.stat()).st_size
        if step == "enqueue":
            await store.enqueue([job("k")])
        elif step == "claim":
            (claimed,) = await store.claim(1)
        else:
            await store.finish(claimed.id)
        written.append(_btrees_written(store.path, since))
    assert written == [
        ["heads", "heads_due", "queue", "queue_key", "sqlite_sequence"],
        ["heads", "heads_due", "queue", "queue_running"],
        ["heads", "queue", "queue_key", "queue_running"],
    ]


@pytest.mark.skipif(not _has_dbstat(), reason="maps pages to tables with SQLite's dbstat table")
async def test_a_known_chat_s_message_merges_its_conversation_without_writing_the_chat_and_amocrm_indexes(
    store: SQLiteStore,
) -> None:
    """The everyday finish merges a record whose chat and amoCRM chat id are the stored ones: the row
    changes in place. A record that brings an amoCRM chat id, or takes a chat over, writes the indexes."""
    known = ConversationRecord("scope", "c1", "tg", "100", amocrm_chat_id="amo-1", client_id="u1", last_client_at=1.0)
    await store.put_conversation(known)
    wal = anyio.Path(f"{store.path}-wal")

    async def finish_with(record: ConversationRecord) -> list[str]:
        await store.enqueue([job("k")])
        (claimed,) = await store.claim(1)
        since = (await wal.stat()).st_size
        await store.finish(claimed.id, conversations=[record])
        return [name for name in _btrees_written(store.path, since) if name.startswith("conversations")]

    # What a message's finish knows: no amoCRM chat id (merged: the stored one stays), a later window.
    assert await finish_with(ConversationRecord("scope", "c1", "tg", "100", client_id="u1", last_client_at=5.0)) == [
        "conversations"
    ]
    assert await store.conversation_by_chat("tg", "100") == msgspec.structs.replace(known, last_client_at=5.0)
    assert await finish_with(msgspec.structs.replace(known, amocrm_chat_id="amo-2")) == [
        "conversations",
        "conversations_amocrm",
        "conversations_chat",
    ]
    assert await store.conversation_by_amocrm("scope", "amo-2") == msgspec.structs.replace(
        known, amocrm_chat_id="amo-2", last_client_at=5.0
    )
    # Another conversation takes the chat over: the old row goes, the new one holds the chat.
    other = ConversationRecord("scope", "c2", "tg", "100", client_id="u2")
    assert "conversations_chat" in await finish_with(other)
    assert await store.conversation_by_chat("tg", "100") == other
    assert await store.conversation("scope", "c1") is None


def _reads() -> int:
    """Read system calls of this process so far (the store's thread is one of its threads)."""
    counts = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return int(counts["syscr"])


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="counts reads in /proc/self/io (Linux)")
async def test_a_burst_of_long_jobs_stays_in_the_writer_s_cache_from_enqueue_to_finish(store: SQLiteStore) -> None:
    """64 webhooks of 100 KB in flight are 1,600 pages of payloads: claimed and finished, they are not
    read back from the file (a finish reads a payload's overflow pages to free them)."""
    await store.enqueue([job(f"k{i}", os.urandom(100_000)) for i in range(64)])
    claimed = await store.claim(64)
    assert len(claimed) == 64
    before = _reads()
    for each in claimed:
        await store.finish(each.id)
    assert _reads() - before < 64 * 3


async def test_a_large_job_s_claim_hand_back_and_retry_write_a_few_pages_not_its_payload(store: SQLiteStore) -> None:
    """A claim changes the row's ``state`` from 'queued' to 'running', a byte longer: SQLite then writes
    the whole row again, a long payload's overflow pages with it, unless the payload is kept apart."""
    await store.enqueue([job("k", os.urandom(400_000)), job("k", os.urandom(400_000))])
    wal = anyio.Path(f"{store.path}-wal")

    async def frames_of(write: Any) -> int:
        before = (await wal.stat()).st_size
        result = await write
        assert (await wal.stat()).st_size - before < 10 * (4096 + 24), write
        return result

    (claimed,) = await frames_of(store.claim(1))
    ahead = await frames_of(store.take_ahead(claimed, 1))
    await frames_of(store.release([j.id for j in ahead]))
    await frames_of(store.retry(claimed.id, delay=0, error="again"))
    (again,) = await frames_of(store.claim(1))
    assert again.id == claimed.id and again.payload == claimed.payload


async def test_an_account_s_queued_jobs_are_buried_with_their_long_payloads(store: SQLiteStore) -> None:
    long = os.urandom(50_000)
    await store.enqueue([job("k", long), job("k", b"short")])
    assert await store.bury_jobs_of("scope", "account removed") == 2
    assert [(d.payload, d.error) for d in await store.dead_letters()] == [
        (long, "account removed"),
        (b"short", "account removed"),
    ]
    assert store._read(lambda conn: conn.execute("SELECT count(*) FROM payloads").fetchone()) == (0,)


async def test_the_queue_s_counts_are_read_off_the_loop(store: SQLiteStore) -> None:
    """``/healthz`` and the metrics count the queue: a scan of every job (56 ms with a million), which
    must not hold the loop that acknowledges webhooks meanwhile."""
    db = sqlite3.connect(store.path)  # beside the store, as a command would
    try:
        db.execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 300000) "
            "INSERT INTO queue (kind, key, payload, scope_id, next_run, created_at) "
            "SELECT 'test', 'k' || (i % 10), x'00', 'scope', 0, 0 FROM n"
        )
        db.commit()
    finally:
        db.close()
    gaps: list[float] = []
    counted = anyio.Event()

    async def tick() -> None:
        last = time.perf_counter()
        while not counted.is_set():
            await anyio.lowlevel.checkpoint()
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    async with anyio.create_task_group() as tg:
        tg.start_soon(tick)
        started = time.perf_counter()
        counts = await store.counts()
        took = time.perf_counter() - started
        counted.set()
    assert counts == {"queued": 300_000, "running": 0, "dead": 0}
    assert max(gaps) < took / 2, (max(gaps), took)


async def test_a_prune_of_many_keys_lets_enqueues_commit_between_its_transactions(store: SQLiteStore) -> None:
    """An hour of dedup keys at 100 webhooks/s is 360,000 rows: deleted in one statement, they held the
    writer (and the loop) for a third of a second; an ack's enqueue now waits for one chunk at most."""
    db = sqlite3.connect(store.path)  # beside the store, as a command would
    try:
        db.execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 30000) "
            "INSERT INTO dedup SELECT 'old:' || i, 1.0 FROM n"
        )
        db.execute("INSERT INTO button_data VALUES ('gone', 'x', 1.0), ('kept', 'y', 1e12)")
        db.commit()
    finally:
        db.close()
    assert await store.enqueue([job("k")], dedup=["fresh"])
    order: list[str] = []

    async def prune() -> None:
        pruned = await store.prune(dedup_older_than=3600)
        order.append("prune")
        assert pruned == {"dedup keys": 30_000, "button data": 1}

    async with anyio.create_task_group() as tg:
        tg.start_soon(prune)
        await anyio.sleep(0.001)
        assert await store.enqueue([job("k")], dedup=["during"])
        order.append("enqueue")
    assert order == ["enqueue", "prune"]
    assert not await store.enqueue([job("k")], dedup=["fresh"])  # young keys stay
    assert await store.enqueue([job("k")], dedup=["old:1"])
    assert await store.button_data("kept") == "y"


async def test_an_account_s_dead_letters_are_found_without_reading_the_others(store: SQLiteStore) -> None:
    """The console lists one account's dead letters: 200,000 of other accounts took 50 ms to read past."""
    await store.enqueue([NewJob("inbound", "k", b"mine", "mine"), NewJob("inbound", "j", b"theirs", "theirs")])
    for claimed in await store.claim(10):
        await store.bury(claimed.id, error="failed")
    statements: list[str] = []
    assert store._reader is not None
    store._reader.set_trace_callback(statements.append)
    try:
        assert [d.payload for d in await store.dead_letters(scope_id="mine")] == [b"mine"]
    finally:
        store._reader.set_trace_callback(None)
    (query,) = [q for q in statements if "FROM dead" in q]
    with contextlib.closing(sqlite3.connect(store.path)) as db:
        plan = " ".join(row[3] for row in db.execute(f"EXPLAIN QUERY PLAN {query}"))
    assert "USING INDEX dead_scope" in plan, plan


async def test_the_store_s_thread_runs_calls_in_order_and_hands_back_outcomes() -> None:
    committer = _Committer()
    ran: list[tuple[int, str]] = []
    gate = threading.Event()

    def call(n: int) -> int:
        if n == 0:
            gate.wait(5)  # the calls after it queue behind it
        ran.append((n, threading.current_thread().name))
        return n * 10

    def fail() -> None:
        raise sqlite3.OperationalError("disk I/O error")

    try:
        first = asyncio.ensure_future(committer.run(lambda: call(0)))
        abandoned = asyncio.ensure_future(committer.run(lambda: call(1)))
        await asyncio.sleep(0)
        abandoned.cancel()  # its waiter is gone; the call still runs, the thread goes on
        gate.set()
        assert await first == 0
        with pytest.raises(sqlite3.OperationalError, match="disk I/O"):
            await committer.run(fail)
        assert await committer.run(lambda: call(2)) == 20
        # An Executor too, for run_in_executor.
        assert await asyncio.get_running_loop().run_in_executor(committer, call, 3) == 30
    finally:
        committer.shutdown(wait=True)
    assert ran == [
        (0, "amoconnect-sqlite"),
        (1, "amoconnect-sqlite"),
        (2, "amoconnect-sqlite"),
        (3, "amoconnect-sqlite"),
    ]
    assert not committer._thread.is_alive()


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


async def test_a_write_on_the_store_s_thread_waits_for_another_process_lock(store: SQLiteStore) -> None:
    """A take ahead (a write of the connection alone, run on the store's thread) waits there for the lock."""
    await store.enqueue([job("a"), job("a")])
    [first] = await store.claim(1)
    other = sqlite3.connect(store.path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")

    async def release() -> None:
        await anyio.sleep(0.3)
        other.execute("COMMIT")

    async with anyio.create_task_group() as tg:
        tg.start_soon(release)
        started = time.monotonic()
        ahead = await store.take_ahead(first, 5)
        waited = time.monotonic() - started
    other.close()
    assert waited >= 0.25
    assert [j.id for j in ahead] == [first.id + 1]
    assert await store.counts() == {"queued": 0, "running": 2, "dead": 0}


async def test_a_version_1_file_gains_the_button_data_table_on_open(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as conn:  # what version 1 created, in short
        conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        conn.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    async with SQLiteStore(path) as store:
        await store.put_button_data("~b:key", "x" * 100, 60)
        assert await store.button_data("~b:key") == "x" * 100
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (str(SCHEMA_VERSION),)


def vm_steps(db: sqlite3.Connection, sql: str, params: tuple[object, ...] = ()) -> int:
    """How many virtual machine instructions SQLite runs for ``sql``: its work, without a clock."""
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    db.set_progress_handler(count, 1)
    try:
        db.execute(sql, params).fetchall()
    finally:
        db.set_progress_handler(None, 1)
    return steps


async def test_a_claim_does_the_same_work_whatever_the_backlog_behind_a_running_head(store: SQLiteStore) -> None:
    """A conversation's backlog waits behind its running head; claims and the next-due lookup
    must not walk it (they once visited every job of the conversation, and every queued job)."""
    work: list[tuple[int, int]] = []
    with contextlib.closing(sqlite3.connect(store.path)) as db:
        db.execute(NEXT_DUE)  # reads the schema, which counts as work too
        for backlog in (2, 3000):
            busy, other = f"busy{backlog}", f"other{backlog}"
            await store.enqueue([job(busy, b"head")])
            (head,) = await store.claim(10)
            await store.enqueue([job(busy, b"%d" % i) for i in range(backlog)] + [job(other), job("later", delay=60)])
            work.append((vm_steps(db, _CLAIM, (time.time(), 64)), vm_steps(db, NEXT_DUE)))
            assert [j.key for j in await store.claim(64)] == [other]
            await store.finish(head.id)
            for i in range(2):  # the backlog runs in order, one job at a time
                (next_job,) = await store.claim(64)
                assert next_job.payload == b"%d" % i
                await store.finish(next_job.id)
    (small_claim, small_due), (big_claim, big_due) = work
    assert big_claim <= small_claim * 1.2 and big_due <= small_due * 1.2, work


async def test_a_version_1_file_gets_head_records_for_the_jobs_it_holds(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.executescript(_SCHEMA)
        db.execute("INSERT INTO meta VALUES ('schema_version', '1')")
        insert = (
            "INSERT INTO queue (kind, key, payload, scope_id, state, next_run, created_at) VALUES (?, ?, ?, ?, ?, ?, 0)"
        )
        db.executemany(
            insert,
            [
                ("t", "a", b"a1", "s", "running", 0),  # left running by a crash
                ("t", "a", b"a2", "s", "queued", 0),
                ("t", "b", b"b1", "s", "queued", time.time() + 3600),
                ("t", "b", b"b2", "s", "queued", 0),
            ],
        )
    async with SQLiteStore(path) as store:
        assert store.recovered == 1
        (first,) = await store.claim(10)  # b waits for its first job, due in an hour
        assert first.payload == b"a1"
        await store.finish(first.id)
        assert [j.payload for j in await store.claim(10)] == [b"a2"]
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (str(SCHEMA_VERSION),)
        assert db.execute("SELECT key, busy FROM heads ORDER BY key").fetchall() == [("a", 1), ("b", 0)]
        schema = dict(db.execute("SELECT name, sql FROM sqlite_master WHERE tbl_name IN ('queue', 'heads')"))
    assert schema["heads"].endswith("WITHOUT ROWID") and "queue_due" not in schema  # version 10
    assert {"queue_added", "queue_claimed", "queue_changed", "queue_removed", "heads_due"} <= set(schema)


async def test_a_claim_that_finds_nothing_commits_nothing_and_claims_commit_without_an_fsync(
    store: SQLiteStore,
) -> None:
    before = store.commits
    assert await store.claim(10) == []  # an empty queue
    await store.enqueue([job("a"), job("a")])
    after_enqueue = store.commits
    (first,) = await store.claim(10)
    assert store._level == "NORMAL"  # the claim's batch alone: no fsync
    assert await store.claim(10) == []  # "a" is busy: nothing to take
    assert (before + 1, after_enqueue + 1) == (after_enqueue, store.commits)
    await store.finish(first.id)
    assert store._level == "FULL"  # what a caller hears of is on disk again
    (second,) = await store.claim(10)
    assert second.payload == b"x" and second.id != first.id


async def test_one_connector_per_file_and_commands_beside_it_leave_its_running_jobs_alone(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    async with SQLiteStore(path) as connector:
        assert await connector.enqueue([NewJob("test", "k", b"x", "scope")])
        assert len(await connector.claim(1)) == 1
        beside = SQLiteStore(path)
        await beside.open(recover=False)  # what `amoconnect jobs list` does
        try:
            assert (await beside.counts())["running"] == 1
        finally:
            await beside.close()
        second = SQLiteStore(path)
        with pytest.raises(StoreError, match=f"in use by another connector \\(pid {os.getpid()}\\)"):
            await second.open()
        assert (await connector.counts())["running"] == 1
    again = SQLiteStore(path)
    await again.open()  # the first connector is gone: its lock with it, and its running job is queued again
    try:
        assert again.recovered == 1
    finally:
        await again.close()


async def test_an_enqueue_commits_ahead_of_the_writes_queued_before_it(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A webhook's ack waits for its enqueue's commit: it does not wait behind the finishes a draining
    backlog handed to the store before it (they depend on no enqueue), which commit next."""
    monkeypatch.setattr("amoconnect.store.sqlite.SOON_LINGER", 60.0)
    await store.enqueue([job("backlog"), job("backlog")])
    first = await store.claim(1)
    assert first
    [second] = await store.take_ahead(first[0], 5)
    finishing = store.finish_soon(first[0].id)
    assert await store.enqueue([job("webhook")])
    assert not finishing.done()  # still waiting for its group
    await store.finish(second.id)  # the next write of another kind hands the accepted finishes over first
    assert finishing.done() and finishing.exception() is None
    assert await store.counts() == {"queued": 1, "running": 0, "dead": 0}


async def test_a_backlog_s_finishes_and_takes_ahead_commit_on_the_store_s_thread(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writes that need no fsync and touch the connection alone run and commit off the event loop, so
    acks and the next send go on meanwhile; a finish among them that fails fails alone, there too."""
    together, finished = sqlite_module._write_together, sqlite_module._finished
    threads: dict[int, str] = {}

    def recording_together(conn: sqlite3.Connection, finishes: list[Finish]) -> None:
        threads.update((f.job_id, threading.current_thread().name) for f in finishes)
        together(conn, finishes)

    def recording(conn: sqlite3.Connection, finish: Finish) -> str | None:
        threads[finish.job_id] = threading.current_thread().name
        return finished(conn, finish)

    monkeypatch.setattr(sqlite_module, "_write_together", recording_together)
    monkeypatch.setattr(sqlite_module, "_finished", recording)
    await store.enqueue([job("backlog") for _ in range(4)])
    [first] = await store.claim(1)
    ahead = await store.take_ahead(first, 3)
    assert [j.id for j in ahead] == [first.id + 1, first.id + 2, first.id + 3]
    sent = [MessageRecord("scope", f"m{j.id}", "backlog", "in", amocrm_id=f"a{j.id}") for j in (first, *ahead)]
    sent[2] = msgspec.structs.replace(sent[2], direction="sideways")  # refused by the table's CHECK
    soon = [store.finish_soon(j.id, messages=[m]) for j, m in zip((first, *ahead), sent, strict=True)]
    await asyncio.wait(soon)
    assert [f.exception() is None for f in soon] == [True, True, False, True]
    assert isinstance(soon[2].exception(), sqlite3.IntegrityError)
    assert set(threads.values()) == {"amoconnect-sqlite"}
    assert await store.counts() == {"queued": 0, "running": 1, "dead": 0}  # the broken finish's job
    assert [await store.message("scope", m.msgid) for m in sent] == [sent[0], sent[1], None, sent[3]]
    await store.enqueue([job("other")])
    [other] = await store.claim(1)
    await store.finish(other.id)  # durable: run on the loop
    assert threads[other.id] == threading.current_thread().name != "amoconnect-sqlite"


async def test_a_durable_commit_is_followed_by_an_fsync_of_the_wal_and_the_connection_never_switches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``synchronous=FULL``: the writer commits under ``NORMAL`` and a durable commit then fsyncs the WAL
    before its callers hear back, through the descriptor of the WAL opened with
    the store (not opened again at each commit); a claim (no fsync) changes no pragma. A failed fsync
    fails the write. ``EXTRA`` keeps SQLite's own syncing, switching per batch."""
    synced: list[str] = []
    synced_files: set[int] = set()
    opened: list[str] = []
    real_fsync, real_open = os.fsync, os.open

    def fsync(fd: int) -> None:
        synced.append(threading.current_thread().name)
        synced_files.add(os.fstat(fd).st_ino)
        real_fsync(fd)

    def open_(path: str, flags: int, *args: Any, **kwargs: Any) -> int:
        opened.append(str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "open", open_)
    async with SQLiteStore(tmp_path / "store.sqlite3") as store:
        writer_level = await store._call(lambda conn: conn.execute("PRAGMA synchronous").fetchone()[0])
        synced.clear()
        opened.clear()
        await store.enqueue([job("a")])
        assert len(synced) == 1  # the enqueue's commit
        (claimed,) = await store.claim(10)
        assert len(synced) == 1  # a claim: none
        await store.finish(claimed.id)
        assert len(synced) == 2
        assert synced_files == {os.stat(tmp_path / "store.sqlite3-wal").st_ino}
        assert opened == []
        assert writer_level == await store._call(lambda conn: conn.execute("PRAGMA synchronous").fetchone()[0]) == 1

        def failing(fd: int) -> None:
            raise OSError(5, "Input/output error")

        monkeypatch.setattr(os, "fsync", failing)
        with pytest.raises(StoreError, match="fsync of the WAL failed"):
            await store.enqueue([job("b")])
    monkeypatch.setattr(os, "fsync", fsync)
    async with SQLiteStore(tmp_path / "extra.sqlite3", synchronous="EXTRA") as store:
        synced.clear()
        await store.enqueue([job("a")])
        assert synced == []  # SQLite syncs within its COMMIT
        assert await store._call(lambda conn: conn.execute("PRAGMA synchronous").fetchone()[0]) == 3


async def test_a_durable_commit_runs_on_the_loop_s_thread_while_commits_are_quick_and_seldom(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Quick durable commits at everyday rates run on the event loop's thread (no hand-off to the
    store's thread and back). Commits close together (a busy relay), and commits once they are slow
    (a slow disk), run on the store's thread, where they hold no ack and no send."""
    here = threading.current_thread().name
    delay = 0.0
    synced: list[str] = []

    def fsync(fd: int) -> None:
        synced.append(threading.current_thread().name)
        time.sleep(delay)

    monkeypatch.setattr(os, "fsync", fsync)
    async with SQLiteStore(tmp_path / "store.sqlite3") as store:
        for n in range(3):
            await store.enqueue([job(f"a{n}")])
            await asyncio.sleep(0.01)
        assert synced[-1] == here
        delay = 0.003
        synced.clear()
        await store.enqueue([job("b1")])
        await store.enqueue([job("b2")])  # right after the last one
        assert synced == [here, "amoconnect-sqlite"]
        await asyncio.sleep(0.05)
        await store.enqueue([job("b3")])
        assert synced[-1] == here
        await asyncio.sleep(0.05)
        delay = 0.02  # a slow disk: the first slow commit shows it, the next ones leave the loop
        synced.clear()
        for n in range(5):
            await store.enqueue([job(f"c{n}")])
            await asyncio.sleep(0.25)
        assert synced == [here] + ["amoconnect-sqlite"] * 4
        assert (await store.counts())["queued"] == 11


def _rows_in_the_database_file(path: Path) -> int:
    """The queue's rows the database file itself holds: what checkpoints copied there from the WAL."""
    with contextlib.closing(sqlite3.connect(f"file:{path}?immutable=1", uri=True)) as conn:
        try:
            return int(conn.execute("SELECT count(*) FROM queue").fetchone()[0])
        except sqlite3.OperationalError:  # not even the schema yet
            return 0


async def test_the_wal_is_checkpointed_between_two_batches_never_by_a_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer's commits never checkpoint (some of them run on the loop, and an ack would wait for one
    made in its commit); once ``_CHECKPOINT_FRAMES`` frames wait in the WAL, a checkpoint copies them on
    the store's thread between two batches, and the WAL is then written again from its start: it stays
    small under a steady stream of commits. A checkpoint that fails is logged and tried again."""
    monkeypatch.setattr(sqlite_module, "_CHECKPOINT_FRAMES", 10**9)
    path = tmp_path / "never.sqlite3"
    async with SQLiteStore(path, synchronous="NORMAL") as store:
        for i in range(300):
            await store.enqueue([job(f"k{i}")])
        assert (await anyio.Path(f"{path}-wal").stat()).st_size > 1000 * 4096  # past SQLite's own wal_autocheckpoint
        assert _rows_in_the_database_file(path) == 0

    monkeypatch.setattr(sqlite_module, "_CHECKPOINT_FRAMES", 200)
    real = sqlite_module._checkpoint_passive
    threads: list[str] = []

    def checkpoint(conn: sqlite3.Connection) -> None:
        threads.append(threading.current_thread().name)
        if len(threads) == 1:
            raise sqlite3.OperationalError("disk I/O error")
        real(conn)

    monkeypatch.setattr(sqlite_module, "_checkpoint_passive", checkpoint)
    path = tmp_path / "checkpointed.sqlite3"
    async with SQLiteStore(path, synchronous="NORMAL") as store:
        with structlog.testing.capture_logs() as logs:
            for i in range(1000):
                await store.enqueue([job(f"k{i}")])
        assert [line["event"] for line in logs] == ["WAL checkpoint failed"]
        assert len(threads) > 5 and set(threads) == {"amoconnect-sqlite"}
        assert 0 < _rows_in_the_database_file(path) < 1000  # by the checkpoints, not by a commit since the last
        assert (await anyio.Path(f"{path}-wal").stat()).st_size < 400 * 4096  # written again from its start after each
        assert len(await store.claim(2000)) == 1000
    assert _rows_in_the_database_file(path) == 1000  # the last close copies the rest
