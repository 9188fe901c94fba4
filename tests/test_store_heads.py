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
async def restarted(store: Store, *, crash: bool, held: int = 1) -> AsyncIterator[Store]:
    """The store's process stops (cleanly, or dies holding its ``held`` jobs) and another opens the same database."""
    if isinstance(store, SQLiteStore):
        # Closing leaves claimed rows running on disk, exactly as a kill -9 does: the next open queues them.
        await store.close()
        async with SQLiteStore(store.path) as again:
            assert again.recovered == held  # opening queued the claimed jobs again
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
            assert again.recovered == held  # opening took back the jobs whose leases ran out
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


def ahead_job(key: str, payload: bytes, *, kind: str = "test", delay: float = 0.0) -> NewJob:
    return NewJob(kind=kind, key=key, payload=payload, scope_id="scope", delay=delay)


async def test_jobs_taken_ahead_keep_their_conversation_busy_until_finished_in_order(store: Store, sql: Sql) -> None:
    await store.enqueue([job("a", b"1"), job("a", b"2"), job("a", b"3"), job("a", b"4"), job("b", b"5")])
    await store.enqueue([ahead_job("a", b"other kind", kind="other"), job("a", b"6")])
    one, five = await store.claim(10)
    ahead = await store.take_ahead(one, 2)
    assert [(j.payload, j.attempts) for j in ahead] == [(b"2", 1), (b"3", 1)]
    assert_heads_match_queue(sql)
    assert await store.claim(10) == [] and await store.next_due_in() is None  # "a" runs
    # Up to the first job of another kind: it runs after them, alone.
    (four,) = await store.take_ahead(ahead[-1], 10)
    assert four.payload == b"4"
    await store.finish_soon(one.id)
    assert_heads_match_queue(sql)
    assert await store.claim(10) == []  # its next jobs are held: the conversation stays busy
    for held in [*ahead, four]:
        await store.finish_soon(held.id)
    assert_heads_match_queue(sql)
    (other,) = await store.claim(10)
    assert other.payload == b"other kind"
    assert await store.take_ahead(other, 10) == []  # "6" is of another kind than "other kind"
    await store.finish(five.id)
    assert_heads_match_queue(sql)


async def test_jobs_taken_ahead_and_given_back_wait_for_a_retried_job(store: Store, sql: Sql) -> None:
    await store.enqueue([job("a", b"1"), job("a", b"2"), job("a", b"3")])
    (one,) = await store.claim(10)
    two, three = await store.take_ahead(one, 10)
    await store.finish_soon(one.id)
    await store.retry(two.id, delay=LATER, error="later")  # "2" failed: "3" must not overtake it
    assert await store.claim(10) == []  # "3" is still held
    await store.release([three.id])
    assert_heads_match_queue(sql)
    assert await store.claim(10) == []  # given back, behind "2", which is not due
    with sql_session(store) as run:
        run("UPDATE queue SET next_run = 0 WHERE state = 'queued'")
    assert_heads_match_queue(sql)
    (again,) = await store.claim(10)
    assert (again.payload, again.attempts) == (b"2", 2)
    (taken,) = await store.take_ahead(again, 10)
    assert (taken.payload, taken.attempts) == (b"3", 1)  # the attempt given back was not counted
    assert_heads_match_queue(sql)


async def test_nothing_is_taken_ahead_of_an_earlier_requeued_dead_letter_or_a_job_not_due(
    store: Store, sql: Sql
) -> None:
    await store.enqueue([job("a", b"1"), job("a", b"2"), job("a", b"3", delay=LATER)])
    (one,) = await store.claim(10)
    await store.bury(one.id, error="dead")
    (two,) = await store.claim(10)
    assert await store.requeue([one.id]) == 1  # back before "2", which runs
    assert await store.take_ahead(two, 10) == []  # "1" runs next, as a finish would take it
    assert await store.finish(two.id, take_next=True) is not None
    assert_heads_match_queue(sql)
    await store.enqueue([job("b", b"4"), job("b", b"5", delay=LATER), job("b", b"6")])
    four = next(j for j in await store.claim(10) if j.key == "b")
    assert await store.take_ahead(four, 10) == []  # "5" is not due: it and what follows wait
    assert_heads_match_queue(sql)


@pytest.mark.parametrize("crash", [False, True], ids=["stopped", "killed"])
async def test_jobs_taken_ahead_of_a_restart_run_again_in_order(store: Store, sql: Sql, crash: bool) -> None:
    await store.enqueue([job("a", b"1"), job("a", b"2"), job("a", b"3"), job("a", b"4")])
    (one,) = await store.claim(10)
    two, _, _ = await store.take_ahead(one, 10)
    await store.finish_soon(one.id)
    await store.finish_soon(two.id)  # committed; "3" and "4" were taken and never finished
    async with restarted(store, crash=crash, held=2) as again:
        assert_heads_match_queue(sql)
        (first,) = await again.claim(10)
        assert first.payload == b"3"
        assert payloads(await again.take_ahead(first, 10)) == [b"4"]
        assert_heads_match_queue(sql)


async def test_finishes_of_several_conversations_committed_together_move_each_head(store: Store, sql: Sql) -> None:
    await store.enqueue([job("a", b"1"), job("a", b"2"), job("a", b"3"), job("a", b"4")])
    await store.enqueue([job("b", b"5"), job("b", b"6"), job("b", b"7"), job("c", b"8")])
    one, five, eight = await store.claim(10)
    ahead_a, ahead_b = await store.take_ahead(one, 2), await store.take_ahead(five, 1)
    # Accepted one after the other without waiting: they commit together (one statement deletes them all).
    accepted = [store.finish_soon(j.id) for j in (one, *ahead_a, five, *ahead_b, eight)]
    for future in accepted:
        await future
    assert_heads_match_queue(sql)
    assert sorted(payloads(await store.claim(10))) == [b"4", b"7"]  # "c" has none left
    assert "c" not in head_records(sql)
    assert_heads_match_queue(sql)
