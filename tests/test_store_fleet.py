"""Several processes on one PostgreSQL store: leases, takeovers, wake-ups and dedup between them."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import anyio
import psycopg
import pytest
from rig import eventually
from test_store_contract import job

from amoconnect.store.base import MessageRecord
from amoconnect.store.postgres import PostgresStore
from amoconnect.testing.stores import fresh_postgres_schema

pytestmark = pytest.mark.anyio

Opener = Callable[..., AbstractAsyncContextManager[PostgresStore]]


@pytest.fixture
def process(postgres: str) -> Opener:
    """``async with process(lease=...) as store``: one more process's store on the test's schema."""
    url = fresh_postgres_schema(postgres)

    def open_one(lease: float = 30.0) -> AbstractAsyncContextManager[PostgresStore]:
        return PostgresStore(url, lease=lease)

    return open_one


def _sql(store: PostgresStore, sql: str) -> list[tuple[object, ...]]:
    with psycopg.connect(store.url, autocommit=True) as conn:
        cur = conn.execute(sql)
        return [tuple(row) for row in cur.fetchall()] if cur.description else []


async def test_a_job_taken_over_after_its_lease_ran_out_is_not_finished_by_its_old_owner(process: Opener) -> None:
    async with process() as a:
        await a.enqueue([job("chat", b"1"), job("chat", b"2")])
        (first,) = await a.claim(10)
        # a stalls past its lease (a long pause, a network partition); b starts and takes the job over
        _sql(a, "UPDATE queue SET lease_until = 0")
        async with process() as b:
            assert b.recovered == 1
            (taken,) = await b.claim(10)
            assert taken.id == first.id
            late = MessageRecord("scope", "m1", "c1", "out", messenger_id="from-a")
            await a.finish(first.id, messages=[late], then=[job("status", kind="status")])
            # b still runs the conversation's head: its next job waits, a's writes did not happen
            assert await b.claim(10) == []
            assert await b.message("scope", "m1") is None
            await a.bury(first.id, error="late")
            await a.retry(first.id, delay=0, error="late")
            assert await b.dead_letters() == []
            assert await b.claim(10) == []
            await b.finish(taken.id)
            (second,) = await b.claim(10)
            assert second.payload == b"2"


async def test_a_slow_job_keeps_its_lease_while_its_process_lives(process: Opener) -> None:
    async with process(lease=0.6) as a:
        await a.enqueue([job("chat")])
        (slow,) = await a.claim(10)
        ((first_lease,),) = _sql(a, "SELECT lease_until FROM queue")
        # long after the lease it was claimed with ran out, another process finds nothing to take
        await eventually(lambda: _sql(a, f"SELECT extract(epoch from clock_timestamp()) > {first_lease} + 0.6")[0][0])
        async with process(lease=0.6) as b:
            assert b.recovered == 0
            assert await b.claim(10) == []
        await a.finish(slow.id)


async def test_a_commit_in_one_process_wakes_the_idle_workers_of_another(process: Opener) -> None:
    async with process() as a, process() as b:
        await b.wait_for_work(0)  # clear the wake of its start
        woke = anyio.Event()

        async def idle() -> None:
            await b.wait_for_work(10)
            woke.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(idle)
            await a.enqueue([job("chat")])
            with anyio.fail_after(2):
                await woke.wait()
        assert [j.key for j in await b.claim(10)] == ["chat"]


async def test_the_same_webhook_at_two_processes_at_once_is_stored_once(process: Opener) -> None:
    accepted: list[bool] = []
    async with process() as a, process() as b:

        async def deliver(store: PostgresStore, key: str) -> None:
            accepted.append(await store.enqueue([job(key)], dedup=[f"hook:{key}"]))

        async with anyio.create_task_group() as tg:
            for n in range(20):
                for store in (a, b, a, b):
                    tg.start_soon(deliver, store, f"k{n}")
        assert accepted.count(True) == 20
        assert (await a.counts())["queued"] == 20
