"""The relay on its own: a store that cannot serve for a while does not end it."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
import structlog
from rig import eventually

from amoconnect.errors import StoreError
from amoconnect.relay import Done, Handler, Relay
from amoconnect.store.base import Job, NewJob
from amoconnect.store.sqlite import SQLiteStore

pytestmark = pytest.mark.anyio


class Unavailable(SQLiteStore):
    """A store whose first ``outage`` claims fail, as during a database restart or failover."""

    outage = 2

    async def claim(self, limit: int) -> list[Job]:
        if self.outage:
            self.outage -= 1
            raise StoreError("PostgreSQL store: claim failed: the database system is starting up")
        return await super().claim(limit)


async def test_the_relay_outlives_a_store_outage(tmp_path: Path) -> None:
    ran: list[bytes] = []

    async def run(job: Job, log: structlog.typing.FilteringBoundLogger) -> Done:
        ran.append(job.payload)
        return Done()

    async with Unavailable(tmp_path / "store.sqlite3") as store, anyio.create_task_group() as tg:
        await store.enqueue([NewJob("test", "k", b"after the outage")])
        relay = Relay(store, {"test": Handler(run)})
        await tg.start(relay.run)
        await eventually(lambda: ran, within=10)
        tg.cancel_scope.cancel()
    assert store.outage == 0 and ran == [b"after the outage"]


class FinishFails(SQLiteStore):
    """A store whose first ``outage`` finishes fail: the job ran, its outcome cannot be written yet."""

    outage = 2

    async def finish(self, job_id: int, **records: object) -> None:  # type: ignore[override]
        if self.outage:
            self.outage -= 1
            raise StoreError("PostgreSQL store: finish failed: connection lost")
        await super().finish(job_id, **records)  # type: ignore[arg-type]


async def test_a_finished_job_records_its_outcome_once_the_store_is_back(tmp_path: Path) -> None:
    ran: list[bytes] = []

    async def run(job: Job, log: structlog.typing.FilteringBoundLogger) -> Done:
        ran.append(job.payload)
        return Done(then=[NewJob("test", "k", b"follow-up")] if job.payload == b"first" else ())

    async with FinishFails(tmp_path / "store.sqlite3") as store, anyio.create_task_group() as tg:
        await store.enqueue([NewJob("test", "k", b"first")])
        relay = Relay(store, {"test": Handler(run)})
        await tg.start(relay.run)
        await eventually(lambda: len(ran) == 2, within=10)
        # The follow-up ran; its own finish commits just after.
        idle = {"queued": 0, "running": 0, "dead": 0}
        await eventually(lambda: _counts_are(store, idle), within=10)
        tg.cancel_scope.cancel()
    # The job ran once: its outcome waited for the store instead of running the work again.
    assert store.outage == 0 and ran == [b"first", b"follow-up"]


async def _counts_are(store: SQLiteStore, expected: dict[str, int]) -> bool:
    return await store.counts() == expected
