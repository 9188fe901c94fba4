"""Which of a store's commits are on disk: a commit made without waiting for the disk is counted,
and a durable commit puts every one made before it began on disk too (one log, written in order)."""

from __future__ import annotations

import asyncio

__all__ = ["OnDisk"]


class OnDisk:
    """Commits made without waiting for the disk, and how many of them are known to be on disk."""

    def __init__(self) -> None:
        self.unsynced = 0
        """Commits made without waiting for the disk so far (the count a durable commit's start reads)."""
        self.synced = 0
        """How many of them are on disk."""
        self._waiting: list[tuple[int, asyncio.Future[None]]] = []

    def lazy_commit(self) -> None:
        """One more commit was made without waiting for the disk."""
        self.unsynced += 1

    def covered(self, upto: int) -> None:
        """A durable commit put the first ``upto`` commits made without waiting on disk (those made before
        it began: read :attr:`unsynced` then)."""
        if upto <= self.synced:
            return
        self.synced = upto
        waiting, self._waiting = self._waiting, []
        for target, future in waiting:
            if target > upto:
                self._waiting.append((target, future))
            else:
                _resolve(future)

    async def covered_within(self, target: int, seconds: float) -> bool:
        """Whether the first ``target`` commits are on disk, waiting up to ``seconds`` for a durable commit
        (another writer's) to put them there."""
        if self.synced >= target or seconds <= 0:
            return self.synced >= target
        loop = asyncio.get_running_loop()
        waiter: tuple[int, asyncio.Future[None]] = (target, loop.create_future())
        self._waiting.append(waiter)
        timer = loop.call_later(seconds, _resolve, waiter[1])  # cheaper than a cancel scope, once a message
        try:
            await waiter[1]
        finally:
            timer.cancel()
            if waiter in self._waiting:
                self._waiting.remove(waiter)
        return self.synced >= target


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
