"""The store a test runs on: SQLite in its directory, or a fresh PostgreSQL schema.

Set ``AMOCONNECT_TEST_POSTGRES`` to a PostgreSQL URL (a database the tests may create schemas
in) and every configuration built by :func:`store_settings` — the kit's rigs, the core's and
the plugins' end-to-end tests — runs on PostgreSQL instead of SQLite, each test in a schema of
its own, migrated like ``amoconnect migrate`` does it. CI runs the suites both ways.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..store.base import Store

__all__ = [
    "POSTGRES_ENV",
    "counts_are",
    "fresh_postgres_schema",
    "postgres_url",
    "run_sql",
    "sql_session",
    "store_settings",
    "table_rows",
]

POSTGRES_ENV = "AMOCONNECT_TEST_POSTGRES"

_SCHEMAS: dict[tuple[str, str], str] = {}


def postgres_url() -> str | None:
    """The PostgreSQL URL the tests run on, or None for SQLite."""
    return os.environ.get(POSTGRES_ENV) or None


def store_settings(workdir: Path, **overrides: Any) -> dict[str, Any]:
    """The ``[store]`` section of a test's configuration (files under ``workdir``).

    On PostgreSQL each ``workdir`` has its schema: a connector started again on the same
    directory finds its store again, as it would find its SQLite file.
    """
    settings: dict[str, Any] = {"path": str(workdir / "store.sqlite3"), "media_dir": str(workdir / "media")}
    url = postgres_url()
    if url is not None:
        key = (url, str(Path(workdir).resolve()))
        if key not in _SCHEMAS:
            _SCHEMAS[key] = fresh_postgres_schema(url)
        # A short lease: a test that kills a process sees its jobs taken over within seconds.
        settings.update(url=_SCHEMAS[key], lease=3.0)
    settings.update(overrides)
    return settings


def fresh_postgres_schema(url: str) -> str:
    """Create an empty, migrated schema in the database at ``url``; returns a URL that uses it."""
    import psycopg

    from ..store.postgres import PostgresStore

    schema = f"test_{secrets.token_hex(6)}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    options = urllib.parse.quote(f"-csearch_path={schema}")
    scoped = f"{url}{'&' if '?' in url else '?'}options={options}"
    # Migrate on a loop of its own: the caller may be a sync fixture or inside a running loop.
    failure: list[BaseException] = []

    def migrate() -> None:
        try:
            asyncio.run(PostgresStore(scoped).migrate())
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=migrate)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return scoped


def table_rows(store: Any, table: str, columns: str = "COUNT(*)") -> list[tuple[Any, ...]]:
    """``SELECT columns FROM table`` on a test's store, synchronously (for polling inside ``eventually``)."""
    return run_sql(store, f"SELECT {columns} FROM {table}")


def run_sql(store: Any, sql: str) -> list[tuple[Any, ...]]:
    """Run one statement on a test's store behind its back, on a connection of its own; the rows it returns."""
    with sql_session(store) as run:
        return run(sql)


@contextlib.contextmanager
def sql_session(store: Any) -> Iterator[Callable[[str], list[tuple[Any, ...]]]]:
    """A connection of its own to a test's store for the block, as a function that runs one statement
    (autocommitted) and returns its rows: for tests that look behind the store's back at every step."""
    url = getattr(store, "url", None)
    if url is not None:
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:

            def run_pg(sql: str) -> list[tuple[Any, ...]]:
                cur = conn.execute(sql)
                return [tuple(row) for row in cur.fetchall()] if cur.description else []

            yield run_pg
        return
    import sqlite3

    with contextlib.closing(sqlite3.connect(store.path, isolation_level=None)) as db:
        db.execute("PRAGMA busy_timeout=5000")
        yield lambda sql: db.execute(sql).fetchall()


async def counts_are(store: Store, **expected: int) -> bool:
    """Whether the store's jobs by state are as ``expected`` (``queued=0, running=0``: the relay is idle);
    states not named are not compared."""
    counts = await store.counts()
    return all(counts[state] == n for state, n in expected.items())
