"""The queue's head records on every backend: each write that moves a conversation's head (a retry,
a dead letter, a requeue or purge of dead letters, a job queued behind a running one, a claim
given back by a restart or a crash) leaves claims and ``next_due_in`` right, and the records equal
what the queue's rows say (``tests/heads.py``). Without the trigger that keeps a path, its test fails."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator

import pytest
from heads import Sql, assert_heads_match_queue, head_records

from amoconnect.store.base import Job, NewJob, Store
from amoconnect.store.sqlite import SQLiteStore
from amoconnect.testing.stores import sql_session

pytestmark = pytest.mark.anyio

LATER = 60.0


def job(key: str, payload: bytes, *, delay: float = 0.0) -> NewJob:
    return NewJob(kind="test", key=key, payload=payload, scope_id="scope", delay=delay)


@pytest.fixture
def sql(store: Store) -> Iterator[Sql]:
    with sql_session(store) as run:
        yield run


def payloads(jobs: list[Job]) -> list[bytes]:
    return [j.payload for j in jobs]


@contextlib.asynccontextmanager
async def restarted(store: Store, *, crash: bool) -> AsyncIterator[Store]:
    """The store's process stops (cleanly, or dies holding its jobs) and another opens the same database."""
    if isinstance(store, SQLiteStore):
        # Closing leaves claimed rows running on disk, exactly as a kill -9 does: the next open queues them.
        await store.close()
        async with SQLiteStore(store.path) as again:
            assert again.recovered == 1  # opening queued the claimed job again
            yield again
        return
    from amoconnect.store.postgres import PostgresStore

    assert isinstance(store, PostgresStore)
    if crash:
        # A dead process gives nothing back and keeps no lease: its jobs wait for their lease to run out.
        with sql_session(store) as run:
            run("UPDATE queue SET owner = 'a process gone', lease_until = 0 WHERE state = 'running'")
    await store.close()  # cleanly: hands back what it holds (after a crash it holds nothing any more)
    async with PostgresStore(store.url, lease=3.0) as again:
        if crash:
            assert again.recovered == 1  # opening took back the jobs whose leases ran out
        yield again


async def test_a_job_queued_behind_a_running_head_waits_for_it(store: Store, sql: Sql) -> None:
    await store.enqueue([job("a", b"1")])
    (one,) = await store.claim(10)
    await store.enqueue([job("a", b"2")])
    assert_heads_match_queue(sql)
    assert await store.claim(10) == []  # the new job does not make its conversation idle
    assert await store.next_due_in() is None
    nxt = await store.finish(one.id, take_next=True)
    assert nxt is not None and nxt.payload == b"2"
    assert_heads_match_queue(sql)
    assert await store.claim(10) == []


async def test_a_retry_with_a_delay_makes_its_conversations_head_not_due(store: Store, sql: Sql) -> None:
    await store.enqueue([job("a", b"1"), job("a", b"2"), job("b", b"3")])
    one, three = await store.claim(10)
    await store.retry(one.id, delay=LATER, error="later")
    assert_heads_match_queue(sql)
    assert await store.claim(10) == []  # "a" is idle but its head is not due; "2" must not overtake it
    due = await store.next_due_in()
    assert due is not None and LATER / 2 < due <= LATER
    await store.retry(three.id, delay=0, error="now")
    assert_heads_match_queue(sql)
    (again,) = await store.claim(10)
    assert (again.payload, again.attempts, again.last_error) == (b"3", 2, "now")
    assert await store.finish(again.id, take_next=True) is None
    assert_heads_match_queue(sql)
    assert "b" not in head_records(sql)


async def test_a_dead_letter_hands_the_head_to_the_next_job(store: Store, sql: Sql) -> None:
    await store.enqueue([job("a", b"1"), job("a", b"2")])
    (one,) = await store.claim(10)
    await store.bury(one.id, error="dead", then=[job("a", b"notice")])
    assert_heads_match_queue(sql)
    (two,) = await store.claim(10)
    assert two.payload == b"2"  # the follow-up of the dead letter queues behind the conversation's jobs
    notice = await store.finish(two.id, take_next=True)
    assert notice is not None and notice.payload == b"notice"
    assert_heads_match_queue(sql)


async def test_the_last_dead_letter_of_a_conversation_leaves_no_head(store: Store, sql: Sql) -> None:
    await store.enqueue([job("a", b"1")])
    (one,) = await store.claim(10)
    await store.bury(one.id, error="dead")
    assert head_records(sql) == {}
    assert await store.next_due_in() is None
    await store.enqueue([job("a", b"2")])  # a stale, busy head would keep this one waiting
    assert_heads_match_queue(sql)
    (two,) = await store.claim(10)
    assert two.payload == b"2"


async def test_requeued_and_purged_dead_letters_move_the_head(store: Store, sql: Sql) -> None:
    await store.enqueue([job("a", b"1"), job("a", b"2")])
    (one,) = await store.claim(10)
    await store.bury(one.id, error="dead")
    assert head_records(sql)["a"][0] != one.id
    assert await store.requeue([one.id]) == 1
    assert head_records(sql)["a"][0] == one.id  # back in its place, before "2"
    assert_heads_match_queue(sql)
    (back,) = await store.claim(10)
    assert back.payload == b"1" and back.attempts == 1
    await store.bury(back.id, error="dead again")
    assert await store.purge([back.id]) == 1
    assert_heads_match_queue(sql)
    (two,) = await store.claim(10)
    assert two.payload == b"2"
    assert await store.finish(two.id, take_next=True) is None
    assert head_records(sql) == {}


@pytest.mark.parametrize("crash", [False, True], ids=["stopped", "killed"])
async def test_a_claim_given_back_by_a_restart_is_its_conversations_head_again(
    store: Store, sql: Sql, crash: bool
) -> None:
    await store.enqueue([job("a", b"1"), job("a", b"2"), job("b", b"3", delay=LATER)])
    (one,) = await store.claim(10)
    async with restarted(store, crash=crash) as again:
        assert_heads_match_queue(sql)
        assert head_records(sql)["a"] == (one.id, head_records(sql)["a"][1], False)
        (first,) = await again.claim(10)
        assert (first.payload, first.attempts) == (b"1", 2)  # run again, before the job behind it
        assert await again.claim(10) == []
        nxt = await again.finish(first.id, take_next=True)
        assert nxt is not None and nxt.payload == b"2"
        assert_heads_match_queue(sql)
