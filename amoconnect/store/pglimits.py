"""Rate limits shared by every process of a PostgreSQL store.

The state of a limit is the in-process :class:`~amoconnect.ratelimit.RateLimiter`'s, one row
per limiter name and key in ``rate_limits``: ``tat``, the theoretical arrival time of the key's
next action (the generic cell rate algorithm), and ``held_until``, the end of the latest
penalty. Times are the database's clock, so the processes' clocks need not agree.

An action takes its slot in one statement (``INSERT … ON CONFLICT DO UPDATE … RETURNING``):
the row moves to ``GREATEST(tat, now) + interval`` under its row lock, and the answer says how
long the caller sleeps until that slot. Reservations are therefore served in the order the
database saw them, across processes. A caller cancelled while it sleeps has spent its slot
(the limit errs on the slow side). A penalty pushes ``tat`` back for everybody; a caller that
wakes inside a penalty issued while it slept takes a new slot after it.

A row whose ``tat`` has passed is a full bucket, the same as no row: the runtime's hourly
pruning deletes such rows (:meth:`PostgresStore.prune <amoconnect.store.postgres.PostgresStore.prune>`).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import anyio
import psycopg
from psycopg.rows import TupleRow

from ..ratelimit import Rate, Sleep
from .sql import PG_NOW as _NOW

__all__ = ["Connect", "PostgresLimiter"]

Connect = Callable[[str], AbstractAsyncContextManager[psycopg.AsyncConnection[TupleRow]]]
"""Lends a connection of the store's pool for one operation, named for its error messages."""

_RESERVE = (
    "INSERT INTO rate_limits AS r (name, key, tat) "
    f"VALUES (%(name)s, %(key)s, {_NOW} + %(delay)s + %(interval)s) "
    f"ON CONFLICT (name, key) DO UPDATE SET tat = GREATEST(r.tat, {_NOW} + %(delay)s) + %(interval)s "
    f"RETURNING r.tat - %(interval)s - %(tolerance)s - ({_NOW} + %(delay)s)"
)
_PENALIZE = (
    "INSERT INTO rate_limits AS r (name, key, tat, held_until) "
    f"VALUES (%(name)s, %(key)s, {_NOW} + %(seconds)s + %(tolerance)s, {_NOW} + %(seconds)s) "
    "ON CONFLICT (name, key) DO UPDATE SET tat = GREATEST(r.tat, EXCLUDED.tat), "
    "held_until = GREATEST(r.held_until, EXCLUDED.held_until)"
)
_HELD = f"SELECT held_until > {_NOW} + %(delay)s FROM rate_limits WHERE name = %(name)s AND key = %(key)s"
_WAIT = f"SELECT GREATEST(tat - %(tolerance)s - {_NOW}, 0) FROM rate_limits WHERE name = %(name)s AND key = %(key)s"


class PostgresLimiter:
    """A :class:`~amoconnect.ratelimit.Limiter` called ``name`` whose state every process on the
    database shares; ``connect`` is the store's (its pool, its errors)."""

    def __init__(self, connect: Connect, name: str, rate: Rate, *, sleep: Sleep = anyio.sleep) -> None:
        self._connect = connect
        self.name = name
        self.rate = rate
        self._sleep = sleep

    def __repr__(self) -> str:
        r = self.rate
        return f"PostgresLimiter({self.name!r}, rate={r.rate!r}, per={r.per!r}, burst={r.burst!r})"

    def _params(self, key: str, **more: float) -> dict[str, Any]:
        return {"name": self.name, "key": key, "tolerance": self.rate.tolerance, **more}

    async def _run(self, sql: str, params: dict[str, Any], action: str) -> Any:
        """Run one statement on the store's pool; its first column of the one row it returns, if any."""
        async with self._connect(action) as conn:
            cur = await conn.execute(sql, params)
            row = await cur.fetchone() if cur.description else None
        return None if row is None else row[0]

    async def acquire(self, key: str = "", *, delay: float = 0.0) -> None:
        """Take the next slot of ``key`` in the database and sleep until it (less ``delay``)."""
        params = self._params(key, delay=delay, interval=self.rate.interval)
        while True:
            wait = float(await self._run(_RESERVE, params, "take a rate limit slot"))
            if wait <= 0:
                return
            await self._sleep(wait)
            if not await self._run(_HELD, params, "read a rate limit"):
                return

    async def penalize(self, key: str, seconds: float) -> None:
        """Give ``key`` no slot for the next ``seconds`` in every process, then the steady rate (no burst)."""
        if not seconds > 0:
            return
        await self._run(_PENALIZE, self._params(key, seconds=seconds), "penalize a rate limit")

    async def wait_time(self, key: str = "") -> float:
        """Seconds until ``key`` has a free slot, as the database sees it now."""
        wait = await self._run(_WAIT, self._params(key), "read a rate limit")
        return 0.0 if wait is None else float(wait)
