"""What only the shared PostgreSQL store does: schema versions, several processes on one database,
leases, LISTEN/NOTIFY, kept finished jobs and media every node serves."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import msgspec
import psycopg
import pytest
import tomli_w
from click.testing import CliRunner
from rig import base_config

from amoconnect.cli import main
from amoconnect.config import parse_config
from amoconnect.errors import StoreError
from amoconnect.media import DatabaseMediaStore
from amoconnect.store import build_store
from amoconnect.store.base import Activity, ConversationRecord, MessageRecord, NewJob
from amoconnect.store.postgres import (
    _ACTIVITY,
    _HAS_HEAD,
    _MERGE_CONVERSATION,
    _TAKE_OVER_CHAT,
    _UPSERT_MESSAGE,
    MIGRATIONS,
    SCHEMA_VERSION,
    PostgresStore,
)
from amoconnect.testing.stores import fresh_postgres_schema, table_rows

pytestmark = pytest.mark.anyio


def job(key: str, payload: bytes = b"x") -> NewJob:
    return NewJob(kind="test", key=key, payload=payload, scope_id="scope")


@pytest.fixture
def url(postgres: str) -> str:
    """A fresh, migrated schema."""
    return fresh_postgres_schema(postgres)


@pytest.fixture
def empty_url(postgres: str) -> str:
    """A fresh schema with no tables at all."""
    scoped = fresh_postgres_schema(postgres)
    with psycopg.connect(scoped, autocommit=True) as conn:
        schema = conn.execute("SELECT current_schema()").fetchone()[0]  # type: ignore[index]
        conn.execute(f"DROP SCHEMA {schema} CASCADE")
        conn.execute(f"CREATE SCHEMA {schema}")
    return scoped


@asynccontextmanager
async def opened(url: str, **options: float) -> AsyncIterator[PostgresStore]:
    async with PostgresStore(url, **options) as store:  # type: ignore[arg-type]
        yield store


async def test_open_refuses_an_unmigrated_database_and_migrate_applies_every_version(empty_url: str) -> None:
    with pytest.raises(StoreError, match=r"schema version 0, this amoconnect needs \d+: run `amoconnect migrate`"):
        await PostgresStore(empty_url).open()
    store = PostgresStore(empty_url)
    # Two processes migrating at once: the advisory lock lets one apply, the other find nothing to do.
    results: list[list[int]] = []

    async def migrate() -> None:
        results.append(await PostgresStore(empty_url).migrate())

    async with anyio.create_task_group() as tg:
        tg.start_soon(migrate)
        tg.start_soon(migrate)
    assert sorted(results) == [[], list(range(1, SCHEMA_VERSION + 1))]
    assert await store.schema_version() == SCHEMA_VERSION
    async with store:
        assert await store.counts() == {"queued": 0, "running": 0, "dead": 0}


async def test_migrate_adds_the_button_data_table_to_a_version_2_database(empty_url: str) -> None:
    with psycopg.connect(empty_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ)")
        for version in (1, 2):
            conn.execute(MIGRATIONS[version - 1].encode())
            conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
    assert await PostgresStore(empty_url).migrate() == list(range(3, SCHEMA_VERSION + 1))
    async with PostgresStore(empty_url) as store:
        await store.put_button_data("~b:key", "x" * 100, 60)
        assert await store.button_data("~b:key") == "x" * 100


async def test_button_data_put_by_one_process_resolves_in_another(url: str) -> None:
    from amoconnect.buttondata import ButtonData

    async with opened(url) as a, opened(url) as b:
        key = await ButtonData(a).shorten("row " * 40, lambda value: len(value) <= 64)
        assert await ButtonData(b).resolve(key) == "row " * 40


async def test_open_refuses_a_newer_schema(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (SCHEMA_VERSION + 1,))
    with pytest.raises(StoreError, match="newer than this amoconnect"):
        await PostgresStore(url).open()
    with pytest.raises(StoreError, match="newer than this amoconnect"):
        await PostgresStore(url).migrate()


def test_migrate_command(empty_url: str, tmp_path: Path) -> None:
    config = tmp_path / "amoconnect.toml"
    config.write_text(tomli_w.dumps(base_config(tmp_path, store={"url": empty_url})))
    first = CliRunner().invoke(main, ["migrate", "--config", str(config)])
    assert first.exit_code == 0, first.output
    assert f"applied schema version(s) {', '.join(map(str, range(1, SCHEMA_VERSION + 1)))}" in first.output
    assert "postgresql://127.0.0.1" in first.output and "@" not in first.output  # no credentials printed
    again = CliRunner().invoke(main, ["migrate", "--config", str(config)])
    assert again.exit_code == 0 and "schema is up to date" in again.output


def test_migrate_command_on_sqlite(tmp_path: Path) -> None:
    config = tmp_path / "amoconnect.toml"
    config.write_text(tomli_w.dumps(base_config(tmp_path, store={"url": "", "path": str(tmp_path / "s.sqlite3")})))
    done = CliRunner().invoke(main, ["migrate", "--config", str(config)])
    assert done.exit_code == 0 and "schema is up to date" in done.output
    assert (tmp_path / "s.sqlite3").exists()


HEADS_VERSION = 4
"""The migration that added the conversations' head records."""


async def test_migrating_a_queue_gives_its_conversations_head_records(empty_url: str) -> None:
    with psycopg.connect(empty_url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE schema_migrations "
            "(version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        for version, script in enumerate(MIGRATIONS[: HEADS_VERSION - 1], 1):
            conn.execute(script.encode())
            conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
        insert = (
            "INSERT INTO queue (kind, key, payload, scope_id, state, next_run, created_at, lease_until) "
            "VALUES ('t', %s, %s, 's', %s, %s, 0, 0)"
        )
        for key, payload, state, next_run in [
            ("a", b"a1", "running", 0),  # its process died: its lease ran out
            ("a", b"a2", "queued", 0),
            ("b", b"b1", "queued", time.time() + 3600),
            ("b", b"b2", "queued", 0),
        ]:
            conn.execute(insert, (key, payload, state, next_run))
    assert await PostgresStore(empty_url).migrate() == list(range(HEADS_VERSION, SCHEMA_VERSION + 1))
    assert table_rows_at(empty_url, "SELECT key, busy FROM heads ORDER BY key") == [("a", True), ("b", False)]
    async with opened(empty_url) as store:
        assert store.recovered == 1
        (first,) = await store.claim(10)  # b waits for its first job, due in an hour
        assert first.payload == b"a1"
        await store.finish(first.id)
        assert [j.payload for j in await store.claim(10)] == [b"a2"]


def table_rows_at(url: str, sql: str) -> list[tuple[object, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        return [tuple(row) for row in conn.execute(sql).fetchall()]


async def test_enqueues_and_finishes_of_one_conversation_in_two_processes_keep_its_head(url: str) -> None:
    """A finish makes its conversation's head again from the jobs while another process enqueues
    into it: the head must never miss a job the other committed (its conversation would stall)."""
    total = 150
    async with opened(url) as producer, opened(url) as consumer:
        ran: list[int] = []

        async def produce() -> None:
            for i in range(total):
                await producer.enqueue([job("k", b"%d" % i)])

        async def consume() -> None:
            deadline = time.monotonic() + 30
            while len(ran) < total:
                assert time.monotonic() < deadline, f"the conversation stalled after {ran[-3:]}"
                claimed = await consumer.claim(10)
                if not claimed:
                    await consumer.wait_for_work(0.05)
                    continue
                assert len(claimed) == 1  # one job of the conversation at a time
                ran.append(int(claimed[0].payload))
                await consumer.finish(claimed[0].id)

        async with anyio.create_task_group() as tg:
            tg.start_soon(produce)
            tg.start_soon(consume)
        assert ran == list(range(total))
        assert table_rows_at(url, "SELECT count(*) FROM heads") == [(0,)]


async def test_a_finish_waits_for_a_job_another_transaction_adds_to_its_conversation(url: str) -> None:
    """The other transaction holds the conversation's head row until it commits: the finish must
    make the head again from what that one wrote, not from what it saw before."""
    async with opened(url) as store:
        await store.enqueue([job("k", b"first")])
        (first,) = await store.claim(10)
        with psycopg.connect(url) as other:  # a transaction, left open
            other.execute(
                "INSERT INTO queue (kind, key, payload, scope_id, next_run, created_at) "
                "VALUES ('t', 'k', 'next', 's', 0, 0)"
            )
            async with anyio.create_task_group() as tg:
                tg.start_soon(store.finish, first.id)
                await anyio.sleep(0.2)
                other.commit()
        (then,) = await store.claim(10)
        assert then.payload == b"next"
        await store.finish(then.id)
        assert table_rows_at(url, "SELECT count(*) FROM heads") == [(0,)]


async def test_two_processes_never_run_one_conversation_at_once(url: str) -> None:
    async with opened(url) as a, opened(url) as b:
        await a.enqueue([job(f"k{i % 5}", str(i).encode()) for i in range(50)])
        running: dict[str, str] = {}
        order: dict[str, list[int]] = {}

        async def worker(name: str, store: PostgresStore) -> None:
            idle = 0
            while idle < 3:
                claimed = await store.claim(4)
                if not claimed:
                    idle += 1
                    await store.wait_for_work(0.05)
                    continue
                idle = 0
                for j in claimed:
                    assert j.key not in running, f"{j.key} claimed by {name} while {running.get(j.key)} runs it"
                    running[j.key] = name
                for j in claimed:
                    await anyio.lowlevel.checkpoint()
                    order.setdefault(j.key, []).append(int(j.payload))
                    del running[j.key]
                    await store.finish(j.id)

        async with anyio.create_task_group() as tg:
            tg.start_soon(worker, "a", a)
            tg.start_soon(worker, "b", b)
        assert sum(map(len, order.values())) == 50
        assert all(seq == sorted(seq) for seq in order.values())


async def test_a_commit_in_one_process_wakes_another(url: str) -> None:
    async with opened(url) as a, opened(url) as b:
        await b.wait_for_work(0)
        woke: list[float] = []

        async def waiter() -> None:
            await b.wait_for_work(10)
            woke.append(time.monotonic())

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await anyio.sleep(0.1)
            started = time.monotonic()
            await a.enqueue([job("k")])
        assert woke and woke[0] - started < 1.0


async def test_a_process_s_own_notifications_wake_nobody_in_it_again(url: str) -> None:
    """A commit of new work wakes the process's own workers at once and NOTIFYs the others with the
    process's ``owner`` as payload; heard back, that wakes nobody (it would cost a claim and a look for
    the next due job each time); another process's, or one without a payload (older versions), does."""
    async with opened(url) as store:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as listener:
            await listener.execute("LISTEN amoconnect_jobs")
            await store.enqueue([job("k")])
            with anyio.fail_after(5):
                note = await anext(aiter(listener.notifies()))
            assert note.payload == store.owner
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as other:
            for payload, wakes in [(store.owner, False), ("host:1:another", True), ("", True)]:
                await store.wait_for_work(0.3)  # the enqueue's wake, or the one before
                await other.execute("SELECT pg_notify('amoconnect_jobs', %s)", (payload,))
                started = time.monotonic()
                await store.wait_for_work(1.0)
                assert (time.monotonic() - started < 0.9) is wakes, payload


async def test_an_enqueue_notifies_in_its_own_statement_and_a_duplicate_not_at_all(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The NOTIFY of new jobs rides in the enqueue's statement (delivered at its commit): no statement or
    pool checkout of its own a webhook. A webhook seen before writes no job and notifies nobody."""
    async with opened(url) as store:
        writes: list[str] = []
        real = store._write

        async def write(sql: str, params: Any = (), **options: Any) -> int:
            writes.append(sql)
            return await real(sql, params, **options)

        monkeypatch.setattr(store, "_write", write)
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as listener:
            await listener.execute("LISTEN amoconnect_jobs")
            assert await store.enqueue([job("k")], dedup=["hook-1"])
            assert not await store.enqueue([job("k")], dedup=["hook-1"])  # seen: no job, no notification
            assert await store.enqueue([job("a"), job("b")], dedup=["hook-2", "hook-3"])  # in a transaction
            notes: list[str] = []
            with anyio.move_on_after(1.0):
                async for note in listener.notifies():
                    notes.append(note.payload)
        assert notes == [store.owner, store.owner]
        assert writes == []


def _reads_of(store: PostgresStore, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The statements ``store`` reads one row with from now on (its lookups, its due-time asks)."""
    reads: list[str] = []
    real = store._one

    async def one(sql: str, params: Any = ()) -> Any:
        reads.append(sql)
        return await real(sql, params)

    monkeypatch.setattr(store, "_one", one)
    return reads


async def test_a_short_claim_tells_when_the_next_job_is_due_without_another_round_trip(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The relay asks :meth:`next_due_in` after every claim that came back short: the claim looked in the
    same round trip. A commit of this process since, or a second ask, looks again."""
    async with opened(url) as store:
        looks = _reads_of(store, monkeypatch)
        await store.enqueue([NewJob(kind="test", key="later", payload=b"x", scope_id="scope", delay=30)])
        assert await store.claim(10) == []
        due = await store.next_due_in()
        assert due is not None and 28 < due <= 30 and looks == []
        assert 28 < (await store.next_due_in() or 0) <= 30 and len(looks) == 1  # asked again: it looks
        await store.claim(10)
        await store.enqueue([NewJob(kind="test", key="sooner", payload=b"x", scope_id="scope", delay=5)])
        assert 3 < (await store.next_due_in() or 0) <= 5 and len(looks) == 2  # committed since the claim
        await store.enqueue([job("now")])
        (claimed,) = await store.claim(10)
        assert claimed.key == "now"
        assert 3 < (await store.next_due_in() or 0) <= 5 and len(looks) == 2


async def test_a_claimed_job_brings_its_chat_s_conversation_for_one_lookup_without_a_read(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job enqueued with its chat (an inbound message, whichever way it was enqueued) is claimed with
    its conversation, or taken with it by the finish of the job before: the handler's lookup by the chat
    reads nothing. Once used it needs records of the chat waiting, as any known row (none here: the next
    lookup reads); a write of this process to the conversation meanwhile, or a job without a chat, reads
    the database."""
    record = ConversationRecord("scope", "conv-1", "inst", "chat-1", "amo-1", "client-1", 5.0)
    async with opened(url) as store:
        await store.put_conversation(record)
        reads = _reads_of(store, monkeypatch)
        chat = ("inst", "chat-1")
        inbound = NewJob("inbound", "inst|chat-1", b"x", "scope", chat=chat)
        await store.enqueue([inbound])
        (claimed,) = await store.claim(10)
        assert await store.conversation_by_chat(*chat) == record and reads == []
        assert await store.conversation_by_chat(*chat) == record and len(reads) == 1  # nothing of the chat waits
        await store.finish(claimed.id)

        # Several jobs in one enqueue (their chats in arrays), a follow-up of a finish (a script's insert).
        await store.enqueue([inbound, NewJob("inbound", "inst|chat-2", b"x", "scope", chat=("inst", "chat-2"))])
        first, second = await store.claim(10)
        assert await store.conversation_by_chat(*chat) == record and len(reads) == 1
        assert await store.conversation_by_chat("inst", "chat-2") is None and len(reads) == 2  # none to bring
        await store.finish(second.id)
        await store.finish(first.id, then=[inbound])
        (follow_up,) = await store.claim(10)
        moved = msgspec.structs.replace(record, amocrm_chat_id="amo-2")
        await store.put_conversation(moved)  # written since the claim: the row it brought is not used
        assert await store.conversation_by_chat(*chat) == moved and len(reads) == 3
        await store.finish(follow_up.id)

        await store.enqueue([job("inst|chat-1")])  # no chat given: nothing brought
        (plain,) = await store.claim(10)
        assert await store.conversation_by_chat(*chat) == moved and len(reads) == 4

        # A finish that takes the conversation's next job brings the conversation as the finish left it.
        await store.enqueue([inbound])
        written = msgspec.structs.replace(moved, amocrm_chat_id="amo-3", last_client_at=9.0)
        following = await store.finish(plain.id, conversations=[written], take_next=True)
        assert following is not None and following.kind == "inbound"
        assert await store.conversation_by_chat(*chat) == written and len(reads) == 4


async def test_a_script_is_one_transaction_and_one_that_fails_writes_nothing_and_hands_its_connection_back_idle(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A finish's, a burial's and a mapping write's statements go in one script (one simple query,
    bound on the client), which the server runs as one transaction: a setting made local by one
    statement holds for the next (a finish's commit without waiting for the WAL's flush) and ends
    with it, and each statement's rows come back in order; when one fails, what the others wrote is
    rolled back before the connection returns to the pool (quietly), and the next operations on the
    pool's connections run as ever. Quotes, backslashes, ``%`` and bytes travel intact."""
    caplog.set_level(logging.WARNING, logger="psycopg")
    async with opened(url, pool_size=2) as store:
        script = store._script()
        script.add("SELECT txid_current(), set_config('synchronous_commit', 'off', true)")
        script.add("INSERT INTO dedup (key, seen_at) VALUES (%s, 0)", ('it\'s 100% \\ "in"',))
        script.add("SELECT txid_current(), current_setting('synchronous_commit'), %s::bytea", (b"\x00'\\",))
        script.add("SELECT 1 WHERE false")
        async with store._conn("script") as conn:
            (((one, _),), none, ((same, setting, raw),), empty) = await script.run(conn)
        assert one == same and setting == "off" and none == empty == [] and bytes(raw) == b"\x00'\\"
        assert table_rows_at(url, "SELECT key FROM dedup") == [('it\'s 100% \\ "in"',)]
        after = store._script()
        after.add("SELECT current_setting('synchronous_commit')")
        async with store._conn("after") as conn:
            assert await after.run(conn) == [[("on",)]]

        async def write_then(failing: str) -> None:
            script = store._script()
            script.add("INSERT INTO dedup (key, seen_at) VALUES ('written', 0)")
            script.add(failing)
            async with store._conn("script") as conn:
                await script.run(conn)

        for failing in ("SELECT 1 / 0", "SELECT * FROM no_such_table"):
            with pytest.raises(StoreError, match="script failed"):
                await write_then(failing)
        assert not [r for r in caplog.records if r.name.startswith("psycopg") and r.levelno >= logging.WARNING]
        assert table_rows_at(url, "SELECT key FROM dedup WHERE key = 'written'") == []
        assert await store.enqueue([job("k")], dedup=["written"])
        assert [j.key for j in await store.claim(10)] == ["k"]


async def test_the_statements_of_a_finish_run_prepared_on_every_pooled_connection(url: str) -> None:
    """A script sends the store's own statements as ``EXECUTE`` of what each pooled connection prepared
    when the pool opened it: the server plans them once a connection, not at every finish."""
    async with opened(url, pool_size=2) as store:
        conversation = ConversationRecord("s", "c1", "main", "chat", "amo", "client", 1.0)
        for n in range(3):
            await store.enqueue([job("k")])
            (claimed,) = await store.claim(10)
            message = MessageRecord("s", f"m{n}", "c1", "in", f"a{n}")
            activity = Activity("s", "c1", f"m{n}", "in", "hello", time.time())
            await store.finish(claimed.id, conversations=[conversation], messages=[message], activity=[activity])
        async with store._conn("look") as conn:
            cur = await conn.execute(
                "SELECT name, generic_plans + custom_plans FROM pg_prepared_statements WHERE name LIKE 'amoconnect%%'"
            )
            runs = dict(await cur.fetchall())
        assert set(runs) == set(store._prepared.values())
        finish_statements = (store._finish_sql, _TAKE_OVER_CHAT, _MERGE_CONVERSATION, _UPSERT_MESSAGE, _ACTIVITY)
        assert all(runs[store._prepared[sql]] > 0 for sql in finish_statements), runs
        script = store._script()
        script.add(_HAS_HEAD, ("k",))
        script.add("SELECT 1")
        assert script._statements == [f"EXECUTE {store._prepared[_HAS_HEAD]}(%s)", "SELECT 1"]
        # psycopg sends DEALLOCATE ALL after a rollback once it prepared statements of its own: a
        # connection that lost them prepares them again, and the finish runs.
        for _ in range(3):  # each of the pool's connections, in turn
            async with store._conn("forget") as conn:
                await conn.execute("DEALLOCATE ALL")
        for n in range(3):
            await store.enqueue([job("k")])
            (claimed,) = await store.claim(10)
            message = MessageRecord("s", f"again{n}", "c1", "in", f"b{n}")
            await store.finish(claimed.id, conversations=[conversation], messages=[message])
        assert table_rows_at(url, "SELECT count(*) FROM messages WHERE msgid LIKE 'again%%'") == [(3,)]


async def test_a_dead_process_s_conversation_is_taken_over_when_its_lease_ends(url: str) -> None:
    async with opened(url, lease=0.6) as survivor:
        dead = PostgresStore(url, lease=0.6)
        await dead.open()
        await dead.enqueue([job("k", b"1"), job("k", b"2")])
        (held,) = await dead.claim(10)
        for task in dead._tasks:  # the process "dies": no more heartbeats, nothing handed back
            task.cancel()
        assert await survivor.claim(10) == []  # the lease holds the conversation
        started = time.monotonic()
        while not (taken := await survivor.claim(10)):
            assert time.monotonic() - started < 5, "the lease never expired"
            await survivor.wait_for_work(0.2)
        assert [(j.id, j.payload, j.attempts) for j in taken] == [(held.id, b"1", 2)]
        # The old owner comes back and reports a retry: it no longer holds the job, so nothing changes.
        await dead.retry(held.id, delay=0, error="late")
        assert await survivor.claim(10) == []
        await survivor.finish(taken[0].id)
        (second,) = await survivor.claim(10)
        assert second.payload == b"2"
        assert dead._pool is not None
        await dead._pool.close()


async def test_a_process_whose_lease_ran_out_neither_finishes_nor_buries_the_job(url: str) -> None:
    async with opened(url) as stalled:
        await stalled.enqueue([job("k", b"1"), job("k", b"2")])
        (held,) = await stalled.claim(10)
        # the process stalls past its lease (a long pause, a partition); another starts and takes the job
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("UPDATE queue SET lease_until = 0")
        async with opened(url) as survivor:
            assert survivor.recovered == 1
            (taken,) = await survivor.claim(10)
            late = MessageRecord("scope", "m1", "c1", "out", messenger_id="late")
            await stalled.finish(held.id, messages=[late], then=[job("follow-up")])
            await stalled.bury(held.id, error="late")
            # the survivor still runs the conversation's head: its next job waits; the late writes rolled back
            assert await survivor.claim(10) == []
            assert await survivor.message("scope", "m1") is None
            assert await survivor.dead_letters() == []
            await survivor.finish(taken.id)
            (second,) = await survivor.claim(10)
            assert second.payload == b"2"


async def test_the_same_webhook_at_two_processes_at_once_is_stored_once(url: str) -> None:
    accepted: list[bool] = []
    async with opened(url) as a, opened(url) as b:

        async def deliver(store: PostgresStore, key: str) -> None:
            accepted.append(await store.enqueue([job(key)], dedup=[f"hook:{key}"]))

        async with anyio.create_task_group() as tg:
            for n in range(20):
                for store in (a, b, a, b):
                    tg.start_soon(deliver, store, f"k{n}")
        assert accepted.count(True) == 20
        assert (await a.counts())["queued"] == 20


async def test_a_live_process_keeps_its_lease(url: str) -> None:
    async with opened(url, lease=0.3) as owner, opened(url, lease=0.3) as other:
        await owner.enqueue([job("k")])
        (held,) = await owner.claim(1)
        await anyio.sleep(1.0)  # several lease lengths: the heartbeat must have extended it
        assert await other.claim(1) == []
        await owner.finish(held.id)


async def test_an_abandoned_job_is_queued_again_once_its_lease_runs_out(url: str) -> None:
    async with opened(url, lease=0.3) as owner, opened(url, lease=0.3) as other:
        await owner.enqueue([job("held"), job("abandoned")])
        held, abandoned = await owner.claim(10)
        owner.abandon(abandoned.id)  # its outcome could not be recorded: the heartbeat lets it go
        started = time.monotonic()
        while not (again := await other.claim(10)):
            assert time.monotonic() - started < 5, "the abandoned job's lease never ran out"
            await other.wait_for_work(0.1)
        assert [(j.id, j.attempts) for j in again] == [(abandoned.id, 2)]
        await anyio.sleep(1.0)  # several lease lengths: the held job's lease was extended all along
        assert await other.claim(10) == []
        await owner.finish(held.id)
        await other.finish(abandoned.id)
        assert await owner.counts() == {"queued": 0, "running": 0, "dead": 0}


async def test_close_hands_held_jobs_back_at_once(url: str) -> None:
    async with opened(url) as other:
        leaving = PostgresStore(url)
        await leaving.open()
        await leaving.enqueue([job("k")])
        (held,) = await leaving.claim(1)
        await leaving.close()
        (again,) = await other.claim(1)
        assert again.id == held.id


async def test_finished_jobs_are_kept_for_their_retention(url: str) -> None:
    async with opened(url, finished_retention=3600) as store:
        await store.enqueue([job("k", b"payload")])
        (j,) = await store.claim(1)
        await store.finish(j.id)
        assert table_rows(store, "finished", "id, key, payload, attempts") == [(j.id, "k", b"payload", 1)]
        assert await store.prune_finished(3600) == 0
        assert await store.prune_finished(-1) == 1
        # The runtime's hourly prune covers them, beside dedup keys and idle rate limit rows.
        await store.limiter("test:idle", 1000, 1.0, burst=1).acquire("k")
        await store.enqueue([job("k2")])
        (j,) = await store.claim(1)
        await store.finish(j.id)
        await anyio.sleep(0.01)  # past the idle key's theoretical arrival time
        pruned = await store.prune(dedup_older_than=3600)
        assert pruned == {"dedup keys": 0, "idle rate limit rows": 1, "button data": 0, "finished jobs": 0}
        assert await store.prune_finished(-1) == 1
    async with opened(url) as store:
        await store.enqueue([job("k")])
        (j,) = await store.claim(1)
        await store.finish(j.id)
        assert table_rows(store, "finished") == [(0,)]


async def test_database_media_served_by_any_node(url: str) -> None:
    secret = "a-media-secret-of-enough-length"
    async with opened(url) as node_a, opened(url) as node_b:
        a, b = DatabaseMediaStore(node_a, secret), DatabaseMediaStore(node_b, secret)
        file_id, size = await a.put(b"PNGDATA", content_type=None, file_name="../photo.png")
        token = a.token(file_id)
        assert b.resolve(token) == file_id
        served = await b.get(file_id)
        assert served is not None
        assert (served.content, served.content_type, served.file_name, size) == (
            b"PNGDATA",
            "image/png",
            "photo.png",
            7,
        )
        assert await b.get("A" * 22) is None
        small = DatabaseMediaStore(node_a, secret, max_bytes=4)
        with pytest.raises(Exception, match="larger than the 4 byte cap"):
            await small.put(b"12345", content_type="text/plain", file_name="x")
        assert await a.prune() == 0
        assert await node_a.prune_media(-1) == 1
        assert await b.get(file_id) is None


def test_store_settings_are_validated(tmp_path: Path) -> None:
    from amoconnect.errors import ConfigError

    with pytest.raises(ConfigError, match=r"store\.url: expected a postgresql://"):
        parse_config(base_config(tmp_path, store={"url": "mysql://x"}))
    with pytest.raises(ConfigError, match="need the PostgreSQL store"):
        parse_config(base_config(tmp_path, store={"url": "", "media": "database"}))
    with pytest.raises(ConfigError, match=r"relay\.dedup_retention_days: must be at least 7"):
        parse_config(base_config(tmp_path, relay={"dedup_retention_days": 1}))
    with pytest.raises(ConfigError, match=r"store\.lease: must be a positive"):
        parse_config(base_config(tmp_path, store={"url": "postgresql://h/db", "lease": 0}))
    config = parse_config(base_config(tmp_path, store={"url": "postgresql://u:s3cret-pw@h:5/db"}))
    assert "s3cret-pw" in config.secrets()  # redacted from logs like every other secret
    store = build_store(config.store)
    assert isinstance(store, PostgresStore) and store.where == "postgresql://h:5/db"


async def test_two_nodes_share_one_store_and_serve_each_other_s_media(url: str, tmp_path: Path) -> None:
    from rig import message, rig

    from amoconnect.model import Attachment
    from amoconnect.testing.kit import eventually

    shared = {"url": url, "media": "database"}
    async with rig(tmp_path / "a", store=shared) as a, rig(tmp_path / "b", store=shared) as b:
        event = message("c1", "1", "look", attachments=(Attachment(kind="picture", fetch="f1", file_name="p.png"),))
        assert (await a.inbound(event)).status_code == 200
        # Either node may relay it (they share the queue); the link it made works on both.
        stored = await eventually(lambda: a.amojo.messages_in("lb:c1") or b.amojo.messages_in("lb:c1"))
        link = stored[0].content.media
        assert link is not None and link.startswith("http://amoconnect/media/")
        for node in (a, b):
            got = await node.client.get(link)
            assert (got.status_code, got.content, got.headers["content-type"]) == (200, b"PNGDATA", "image/png")
        assert not (tmp_path / "a" / "media").exists() and not (tmp_path / "b" / "media").exists()


async def test_check_and_healthz_report_a_store_that_cannot_serve(empty_url: str, url: str, tmp_path: Path) -> None:
    from rig import rig

    from amoconnect.checks import _check_store

    (problem,) = await _check_store(parse_config(base_config(tmp_path, store={"url": empty_url})))
    assert problem.startswith("store: postgresql://") and "schema version 0" in problem
    assert "run amoconnect migrate" in problem
    assert await _check_store(parse_config(base_config(tmp_path, store={"url": url}))) == []
    async with rig(tmp_path, store={"url": url}) as r:
        assert (await r.client.get("/healthz")).status_code == 200
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("ALTER TABLE queue RENAME TO queue_gone")
        unhealthy = await r.client.get("/healthz")
        assert unhealthy.status_code == 503 and unhealthy.json()["status"] == "store_unavailable"
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("ALTER TABLE queue_gone RENAME TO queue")


async def test_a_lease_has_one_holder_until_it_runs_out(url: str) -> None:
    async with opened(url) as a, opened(url) as b:
        assert await a.hold_lease("poll", 0.5)
        assert await a.hold_lease("poll", 0.5)  # renewal
        assert not await b.hold_lease("poll", 0.5)
        assert await b.hold_lease("other", 0.5)  # names are independent
        await anyio.sleep(0.6)
        assert await b.hold_lease("poll", 30)  # a's ran out
        assert not await a.hold_lease("poll", 30)
        await a.release_lease("poll")  # not a's to release
        assert not await a.hold_lease("poll", 30)
        await b.release_lease("poll")
        assert await a.hold_lease("poll", 30)


async def test_exclusive_work_runs_in_one_process_and_moves_when_it_dies(url: str) -> None:
    from functools import partial

    from amoconnect.leases import run_exclusive

    running: list[str] = []

    def work(name: str):  # type: ignore[no-untyped-def]
        async def poll() -> None:
            running.append(name)
            try:
                await anyio.sleep_forever()
            finally:
                running.remove(name)

        return poll

    async def until(expected: list[str]) -> None:
        with anyio.fail_after(5):
            while running != expected:
                await anyio.sleep(0.05)

    async with opened(url) as a, opened(url) as b, anyio.create_task_group() as fleet:
        fleet.start_soon(partial(run_exclusive, b, "tg:bot:poll", work("b"), seconds=0.6))
        await until(["b"])
        fleet.start_soon(partial(run_exclusive, a, "tg:bot:poll", work("a"), seconds=0.6))
        await anyio.sleep(1.0)
        assert running == ["b"]  # a waits while b holds and renews the lease
        # b loses its store: it cannot renew, stops its work when the lease runs out, and a takes over.
        assert b._pool is not None
        await b._pool.close()
        await until(["a"])
        fleet.cancel_scope.cancel()
    assert running == []


async def test_enqueues_into_the_same_conversations_in_opposite_orders_do_not_deadlock(url: str) -> None:
    """Two processes each write jobs for conversations a..h in one call, one in the opposite order
    of the other: each statement locks the conversations' head rows as it goes, so unless the rows
    are always taken in one order the server aborts one of them as a deadlock."""
    keys = [f"k{i}" for i in range(8)]
    rounds = 300
    async with opened(url) as one, opened(url) as other:

        async def write(store: PostgresStore, order: list[str]) -> None:
            for i in range(rounds):
                assert await store.enqueue([job(key, b"%d" % i) for key in order])

        async with anyio.create_task_group() as tg:
            tg.start_soon(write, one, keys)
            tg.start_soon(write, other, keys[::-1])
        assert table_rows_at(url, "SELECT count(DISTINCT key), count(*) FROM queue") == [(8, 8 * 2 * rounds)]


async def test_finishes_writing_follow_ups_into_each_other_s_conversations_do_not_deadlock(url: str) -> None:
    """Each process finishes a job of its conversation with a follow-up for the other's (a status for
    a chat, a reply), at the same moment: PostgreSQL aborts one of two such transactions as a
    deadlock, and the aborted one, having written nothing, must be run again rather than lost."""
    async with opened(url) as one, opened(url) as other:
        for i in range(150):
            a, b = f"a{i}", f"b{i}"
            await one.enqueue([job(a)])
            (held_a,) = await one.claim(10)
            await other.enqueue([job(b)])
            (held_b,) = await other.claim(10)
            async with anyio.create_task_group() as tg:
                tg.start_soon(partial(one.finish, held_a.id, then=[job(b, b"from a")]))
                tg.start_soon(partial(other.finish, held_b.id, then=[job(a, b"from b")]))
            assert sorted(table_rows_at(url, "SELECT key, payload FROM queue")) == [(a, b"from b"), (b, b"from a")]
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("DELETE FROM queue")


async def test_a_finish_aborted_as_a_deadlock_runs_again(url: str) -> None:
    """Another transaction adds the first job of conversation ``a`` (its head row is new, so nothing
    can lock it ahead) and then one of ``b``, while a finish of ``b`` writes a follow-up into ``a``:
    the two wait on each other, the server aborts the finish, which ran first, and the finish runs again."""
    async with opened(url) as store:
        await store.enqueue([job("b", b"held")])
        (held,) = await store.claim(10)
        with psycopg.connect(url) as other:  # a transaction, left open
            insert = (
                "INSERT INTO queue (kind, key, payload, scope_id, next_run, created_at) VALUES ('t', %s, %s, 's', 0, 0)"
            )
            other.execute(insert, ("a", b"other's a"))
            async with anyio.create_task_group() as tg:
                tg.start_soon(partial(store.finish, held.id, then=[job("a", b"follow-up")]))
                await anyio.sleep(0.3)  # the finish waits for the other's new head row of a
                await anyio.to_thread.run_sync(other.execute, insert, ("b", b"other's b"))
                other.commit()
        assert sorted(table_rows_at(url, "SELECT key, payload FROM queue")) == [
            ("a", b"follow-up"),
            ("a", b"other's a"),
            ("b", b"other's b"),
        ]
