"""Time that does not step.

The wall clock steps: NTP corrects it, an operator sets it, a virtual machine resumes. A wait
measured on it stalls for the size of a backward step (or ends early after a forward one).
:class:`SteadyClock` reads the wall clock once and from then on advances with the monotonic
clock, so intervals measured on it are true whatever the wall clock does.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["SteadyClock"]


class SteadyClock:
    """Unix seconds that never step: ``wall()`` read once, then advanced by ``monotonic()``.

    It drifts from the wall clock only by the steps the wall clock takes after it was made.
    Both sources are injectable, so tests step a fake wall clock instead of the system's.
    """

    def __init__(self, wall: Callable[[], float] = time.time, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._monotonic = monotonic
        self._offset = wall() - monotonic()

    def __call__(self) -> float:
        return self._offset + self._monotonic()
