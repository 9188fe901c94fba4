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
