"""Durable stores: the interface (:mod:`.base`), SQLite (:mod:`.sqlite`, the embedded default)
and PostgreSQL (:mod:`.postgres`, shared by several processes), chosen by ``[store] url``."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from ..config import StoreConfig
from ..errors import StoreError
from .base import Store

__all__ = ["build_store", "migrate_store", "opened_store"]


def build_store(config: StoreConfig) -> Store:
    """The store ``config`` names: PostgreSQL when ``url`` is set, else the SQLite file at ``path``."""
    if config.url:
        try:
            from .postgres import PostgresStore
        except ImportError as exc:
            raise StoreError(
                f"store.url names PostgreSQL, but its driver is not installed ({exc.name}): "
                "pip install 'amoconnect[postgres]'"
            ) from exc
        return PostgresStore(
            config.url,
            pool_size=config.pool_size,
            lease=config.lease,
            finished_retention=config.finished_retention_days * 86400,
        )
    from .sqlite import SQLiteStore

    return SQLiteStore(config.path, synchronous=config.synchronous)


async def migrate_store(config: StoreConfig) -> tuple[str, list[int]]:
    """Bring the store's schema up to date; returns where it is and the versions applied.

    PostgreSQL is migrated only by this (``amoconnect migrate``); SQLite migrates itself on open.
    """
    store = build_store(config)
    return store.where, await store.migrate()


@contextlib.asynccontextmanager
async def opened_store(config: StoreConfig) -> AsyncIterator[Store]:
    """The store ``config`` names, open for the block (for commands that run beside the connector)."""
    store = build_store(config)
    await store.open(recover=False)
    try:
        yield store
    finally:
        await store.close()
