"""Work that one process of the fleet does at a time, e.g. long polling a bot.

Several ``amoconnect run`` processes on one PostgreSQL store each run every adapter; a
messenger that is polled (Telegram ``getUpdates``, VK Long Poll) must be polled by one of
them only. :func:`run_exclusive` runs such work while this process holds a named, renewed
lease in the store; when the process dies the lease runs out and another takes the work up.
On SQLite (one process) the lease is always this process's.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
import structlog

from .errors import StoreError
from .store.base import Store

__all__ = ["LEASE_SECONDS", "run_exclusive"]

log = structlog.get_logger("amoconnect.leases")

LEASE_SECONDS = 15.0
"""How long a held lease outlives its holder's last renewal (renewed every third of it)."""


async def run_exclusive(
    store: Store, name: str, work: Callable[[], Awaitable[None]], *, seconds: float = LEASE_SECONDS
) -> None:
    """Run ``work`` while this process holds the fleet-wide lease ``name``; return when it returns.

    Waits while another process holds the lease. If the lease is lost (the store was out of
    reach for longer than ``seconds``, so another process may have taken it), ``work`` is
    cancelled and started again once the lease is held again.
    """
    every = seconds / 3
    while True:
        if not await _hold(store, name, seconds):
            await anyio.sleep(every)
            continue
        log.info("lease taken", lease=name)
        finished = False
        try:
            async with anyio.create_task_group() as tasks:

                async def renew() -> None:
                    held_until = anyio.current_time() + seconds
                    while True:
                        await anyio.sleep(every)
                        if await _hold(store, name, seconds):
                            held_until = anyio.current_time() + seconds
                        elif anyio.current_time() + every >= held_until:
                            log.warning("lease lost; stopping its work", lease=name)
                            tasks.cancel_scope.cancel()
                            return

                async def run() -> None:
                    nonlocal finished
                    await work()
                    finished = True
                    tasks.cancel_scope.cancel()

                tasks.start_soon(renew)
                tasks.start_soon(run)
        finally:
            with anyio.CancelScope(shield=True):
                await _release(store, name)
        if finished:
            return


async def _hold(store: Store, name: str, seconds: float) -> bool:
    try:
        return await store.hold_lease(name, seconds)
    except StoreError as exc:
        log.warning("lease renewal failed", lease=name, error=str(exc))
        return False


async def _release(store: Store, name: str) -> None:
    try:
        await store.release_lease(name)
    except StoreError as exc:
        log.warning("lease release failed", lease=name, error=str(exc))
