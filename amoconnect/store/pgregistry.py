"""The registry's rows in the PostgreSQL store (:mod:`.registry`), with a notification per write."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import psycopg
import structlog
from psycopg.rows import TupleRow

from .registry import (
    REGISTRY_CHANNEL,
    AccountRecord,
    RegistryChanges,
    SourceRecord,
    account_of,
    account_params,
    registry_sql,
    source_of,
    source_params,
)
from .sql import PG_NOW

__all__ = ["PostgresRegistryRows"]

log = structlog.get_logger("amoconnect.store")

_SQL = registry_sql("%s")
Conn = psycopg.AsyncConnection[TupleRow]


class PostgresRegistryRows:
    """:class:`~amoconnect.store.registry.RegistryRows` of the PostgreSQL store."""

    if TYPE_CHECKING:
        url: str
        where: str

        def _conn(self, action: str, *, transaction: bool = False) -> contextlib.AbstractAsyncContextManager[Conn]: ...

    async def registry_changes(self, since: int) -> RegistryChanges:
        # REPEATABLE READ: the revision and the rows up to it from one snapshot.
        async with self._conn("read the registry") as conn, conn.transaction():
            await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            cur = await conn.execute(_SQL["revision"])
            row = await cur.fetchone()
            revision = int(row[0]) if row else 0
            cur = await conn.execute(_SQL["accounts"], (since, revision))
            accounts = [account_of(r) for r in await cur.fetchall()]
            cur = await conn.execute(_SQL["sources"], (since, revision))
            sources = [source_of(r) for r in await cur.fetchall()]
        return RegistryChanges(revision, accounts, sources)

    async def _registry_write(self, statement: str, row_of: Callable[[int], tuple[Any, ...]]) -> int:
        async with self._conn("write the registry", transaction=True) as conn:
            # The counter's row stays locked until the commit: writers take their numbers in commit order.
            cur = await conn.execute(_SQL["bump"])
            row = await cur.fetchone()
            assert row is not None
            revision = int(row[0])
            await conn.execute(_SQL[statement], row_of(revision))
            await conn.execute("SELECT pg_notify(%s, %s)", (REGISTRY_CHANNEL, str(revision)))
        return revision

    async def put_account(self, record: AccountRecord) -> int:
        return await self._registry_write("put_account", lambda revision: account_params(record, revision))

    async def put_source(self, record: SourceRecord) -> int:
        return await self._registry_write("put_source", lambda revision: source_params(record, revision))

    async def bury_jobs_of(self, scope_id: str, error: str) -> int:
        async with self._conn("bury the jobs of a scope") as conn:
            cur = await conn.execute(
                "WITH gone AS (DELETE FROM queue WHERE scope_id = %s AND state = 'queued' "
                "RETURNING id, kind, key, payload, scope_id, attempts, created_at) "
                f"INSERT INTO dead SELECT *, {PG_NOW}, %s FROM gone ON CONFLICT (id) DO UPDATE SET "
                "attempts = EXCLUDED.attempts, failed_at = EXCLUDED.failed_at, error = EXCLUDED.error",
                (scope_id, error),
            )
            return cur.rowcount

    async def watch_registry(self, changed: Callable[[], None]) -> None:
        delay = 0.5
        while True:
            try:
                async with self._listener() as notifies:
                    delay = 0.5
                    changed()  # a write may have come while nobody listened
                    async for _ in notifies:
                        changed()
            except psycopg.Error as exc:
                log.warning("registry listener disconnected; reconnecting", store=self.where, error=str(exc))
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)

    @contextlib.asynccontextmanager
    async def _listener(self) -> AsyncIterator[AsyncIterator[Any]]:
        async with await psycopg.AsyncConnection.connect(self.url, autocommit=True, connect_timeout=10) as conn:
            await conn.execute(f"LISTEN {REGISTRY_CHANNEL}")
            yield conn.notifies()
