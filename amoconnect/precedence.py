"""Webhooks before the backlog: a draining queue waits while webhooks are being received.

A webhook's ack is what a messenger or amoCRM waits for (amoCRM gives up after 5 s and never
retries); a job of a backlog can start a few milliseconds later without anyone noticing. The
server counts the webhooks it is receiving (:meth:`Arrivals.arriving`) and the relay, before it
starts the next job of a backlog, waits until none is (:meth:`Arrivals.settled`), for a bounded
time so that a steady stream of webhooks slows the drain but never stops it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import anyio

__all__ = ["Arrivals"]


class Arrivals:
    """The webhooks being received now."""

    def __init__(self) -> None:
        self._count = 0
        self._quiet: anyio.Event | None = None

    @property
    def count(self) -> int:
        return self._count

    @contextmanager
    def arriving(self) -> Iterator[None]:
        """Count one webhook while it is received, checked, stored and answered."""
        self._count += 1
        try:
            yield
        finally:
            self._count -= 1
            if not self._count and self._quiet is not None:
                self._quiet.set()
                self._quiet = None

    async def settled(self, at_most: float) -> None:
        """Return once no webhook is being received, or after ``at_most`` seconds."""
        if not self._count:
            return
        if self._quiet is None:
            self._quiet = anyio.Event()
        with anyio.move_on_after(at_most):
            await self._quiet.wait()
