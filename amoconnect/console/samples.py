"""The queue over the last hour, from this process's own counters: one sample a minute in a ring.

Each sample holds the queue's depth (queued and running jobs, from the store, so a fleet's whole
queue) and how many jobs this process finished since the sample before (its throughput). The
operator's overview draws them (:func:`chart`); no external monitoring is needed.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Awaitable, Callable
from typing import NamedTuple

import structlog

from ..errors import StoreError

__all__ = ["INTERVAL", "Chart", "Sample", "Samples", "chart"]

log = structlog.get_logger("amoconnect.console")

INTERVAL = 60.0
"""Seconds between samples."""


class Sample(NamedTuple):
    at: float
    depth: int
    """Jobs queued or running."""
    finished: int
    """Jobs this process finished since the sample before."""


class Samples:
    """A ring of the last ``size`` samples; ``counts`` reads the queue's counts, ``finished`` this
    process's count of finished jobs so far."""

    def __init__(
        self,
        counts: Callable[[], Awaitable[dict[str, int]]],
        finished: Callable[[], float],
        *,
        size: int = 60,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._counts, self._finished, self._clock = counts, finished, clock
        self._ring: collections.deque[Sample] = collections.deque(maxlen=size)
        self._last = finished()

    async def take(self) -> None:
        """Add one sample now (a store that does not answer skips it)."""
        try:
            counts = await self._counts()
        except StoreError as exc:
            log.warning("queue sample skipped: store unavailable", error=str(exc))
            return
        total = self._finished()
        self._ring.append(
            Sample(self._clock(), counts.get("queued", 0) + counts.get("running", 0), int(total - self._last))
        )
        self._last = total

    def recent(self) -> list[Sample]:
        """The samples, oldest first."""
        return list(self._ring)

    async def run(self, interval: float = INTERVAL) -> None:
        """Take a sample every ``interval`` seconds, for ever."""
        import anyio

        while True:
            await self.take()
            await anyio.sleep(interval)


class Chart(NamedTuple):
    """Two lines of an SVG chart (``points`` of a ``<polyline>``) and their peaks."""

    width: int
    height: int
    depth: str
    finished: str
    max_depth: int
    max_finished: int
    minutes: int


def chart(samples: list[Sample], width: int = 600, height: int = 120) -> Chart:
    """The polylines of ``samples``: x is time (the last hour, right edge now), y each series scaled to its peak."""
    if not samples:
        return Chart(width, height, "", "", 0, 0, 0)
    peak_depth = max(s.depth for s in samples)
    peak_finished = max(s.finished for s in samples)
    step = width / max(1, len(samples) - 1)

    def line(values: list[int], peak: int) -> str:
        return " ".join(
            f"{i * step:.1f},{height - (v / peak * (height - 4) if peak else 0) - 2:.1f}" for i, v in enumerate(values)
        )

    return Chart(
        width,
        height,
        line([s.depth for s in samples], peak_depth),
        line([s.finished for s in samples], peak_finished),
        peak_depth,
        peak_finished,
        len(samples),
    )
