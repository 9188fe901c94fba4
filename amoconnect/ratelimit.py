"""Per-key token-bucket rate limiting for remote APIs and messengers.

:class:`Limiter` is what the runtime, the REST client and plugins program against; a store
hands them out by name (:meth:`Store.limiter <amoconnect.store.base.Store.limiter>`), so a limit
holds for every process that shares the store. :class:`RateLimiter` is the in-process one (the
SQLite store's and the default); the PostgreSQL store's keeps the same state in a table.

:class:`RateLimiter` lets at most ``rate`` actions per ``per`` seconds through for each key
(an account, a chat, a bot), in bursts of up to ``burst``. It is the generic cell rate
algorithm: each key keeps one number, the theoretical arrival time of its next action, so a
key costs a few dozen bytes and a bucket that has refilled carries no information at all —
such idle buckets are dropped as the table grows.

Waiters of one key are served first come, first served: one waiter at a time sleeps until
its slot while the others queue behind it. A waiter that is cancelled gives its place up
without using a slot. :meth:`RateLimiter.penalize` pushes a key's next slot back, e.g. when
the remote answered 429; a waiter already asleep sees the new time when it wakes.

The clock and the sleep are injectable, so tests can run hours of traffic without sleeping.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import anyio

from .errors import ConfigError

__all__ = ["Clock", "Limiter", "LimiterFactory", "LocalLimiters", "Rate", "RateLimiter", "Sleep"]

Clock = Callable[[], float]
"""A monotonic clock in seconds."""
Sleep = Callable[[float], Awaitable[None]]
"""An async sleep of that clock's seconds."""

_MIN_SWEEP = 256


class Limiter(Protocol):
    """At most a rate of actions per key; what callers of a rate limit program against."""

    async def acquire(self, key: str = "", *, delay: float = 0.0) -> None:
        """Wait for a slot of ``key`` and take it; ``delay``: the action happens that many seconds from now."""
        ...

    async def penalize(self, key: str, seconds: float) -> None:
        """Give ``key`` no slot for the next ``seconds`` (the remote answered 429), for every user of the limit."""
        ...

    async def wait_time(self, key: str = "") -> float:
        """Seconds until ``key`` has a free slot (0 when it has one now)."""
        ...


class LimiterFactory(Protocol):
    """Hands out the limiter called ``name``: one name is one limit wherever it is asked for."""

    def __call__(self, name: str, rate: float, per: float = 1.0, burst: int | None = None) -> Limiter: ...


@dataclass(frozen=True)
class Rate:
    """``rate`` actions per ``per`` seconds for each key, in bursts of up to ``burst``."""

    rate: float
    per: float
    burst: int

    @classmethod
    def of(cls, rate: float, per: float = 1.0, burst: int | None = None) -> Rate:
        """The checked rate; ``burst`` defaults to ``rate`` (at least 1)."""
        if not (rate > 0 and math.isfinite(rate)):
            raise ConfigError(f"rate limit: rate must be a positive number of actions, got {rate!r}")
        if not (per > 0 and math.isfinite(per)):
            raise ConfigError(f"rate limit: per must be a positive number of seconds, got {per!r}")
        if burst is None:
            burst = max(1, math.floor(rate))
        if burst < 1:
            raise ConfigError(f"rate limit: burst must be at least 1, got {burst!r}")
        return cls(rate, per, burst)

    @property
    def interval(self) -> float:
        """Seconds between two actions of one key at the steady rate."""
        return self.per / self.rate

    @property
    def tolerance(self) -> float:
        """How far ahead of the steady rate a burst may run, in seconds."""
        return (self.burst - 1) * self.interval


class _Bucket:
    __slots__ = ("lock", "tat", "users")

    def __init__(self) -> None:
        self.lock = anyio.Lock()
        self.tat = -math.inf
        """Theoretical arrival time: with a full bucket, the next action is due then."""
        self.users = 0
        """Tasks holding or waiting for ``lock``; the bucket is kept while any are."""


class RateLimiter:
    """At most ``rate`` actions per ``per`` seconds for each key, in bursts of up to ``burst``.

    ``burst`` defaults to ``rate`` (at least 1): a key idle for ``per`` seconds may spend a whole
    period's allowance at once. Pass ``burst=1`` to space actions evenly, which also keeps a
    client under a remote that counts requests in a sliding window.
    """

    def __init__(
        self,
        rate: float,
        per: float = 1.0,
        burst: int | None = None,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = anyio.sleep,
    ) -> None:
        checked = Rate.of(rate, per, burst)
        self.rate = rate
        self.per = per
        self.burst = checked.burst
        self._interval = checked.interval
        self._tolerance = checked.tolerance
        self._clock = clock
        self._sleep = sleep
        self._buckets: dict[str, _Bucket] = {}
        self._sweep_at = _MIN_SWEEP

    def __repr__(self) -> str:
        return f"RateLimiter(rate={self.rate!r}, per={self.per!r}, burst={self.burst!r})"

    @property
    def tracked_keys(self) -> int:
        """Number of keys currently tracked (idle ones are dropped as the table grows)."""
        return len(self._buckets)

    @property
    def interval(self) -> float:
        """Seconds between two actions of one key at the steady rate."""
        return self._interval

    def _bucket(self, key: str) -> _Bucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._sweep_at:
                self._sweep()
            bucket = self._buckets[key] = _Bucket()
        return bucket

    def _sweep(self) -> None:
        # A bucket whose arrival time has passed is full: the same as a new one, so dropping it loses nothing.
        now = self._clock()
        idle = [key for key, b in self._buckets.items() if b.users == 0 and b.tat <= now]
        for key in idle:
            del self._buckets[key]
        self._sweep_at = max(_MIN_SWEEP, 2 * len(self._buckets))

    async def acquire(self, key: str = "", *, delay: float = 0.0) -> None:
        """Wait for a slot of ``key`` and take it.

        ``delay`` says the action will happen that many seconds from now (a retry about to
        back off): the slot is taken for that moment, and the wait is shorter by as much.
        """
        bucket = self._bucket(key)
        bucket.users += 1
        try:
            async with bucket.lock:
                while True:
                    at = self._clock() + delay
                    wait = bucket.tat - self._tolerance - at
                    if wait <= 0:
                        bucket.tat = max(bucket.tat, at) + self._interval
                        return
                    await self._sleep(wait)
        finally:
            bucket.users -= 1

    def try_acquire(self, key: str = "") -> bool:
        """Take a slot of ``key`` if one is free now and nobody is queued for it; never waits."""
        bucket = self._bucket(key)
        if bucket.users:
            return False
        now = self._clock()
        if bucket.tat - self._tolerance > now:
            return False
        bucket.tat = max(bucket.tat, now) + self._interval
        return True

    async def wait_time(self, key: str = "") -> float:
        """Seconds until ``key`` has a free slot (0 when it has one now), ignoring queued waiters."""
        bucket = self._buckets.get(key)
        if bucket is None:
            return 0.0
        return max(bucket.tat - self._tolerance - self._clock(), 0.0)

    async def penalize(self, key: str, seconds: float) -> None:
        """Give ``key`` no slot for the next ``seconds``, then resume at the steady rate (no burst)."""
        if not seconds > 0:
            return
        bucket = self._bucket(key)
        bucket.tat = max(bucket.tat, self._clock() + seconds + self._tolerance)


class LocalLimiters:
    """A :class:`LimiterFactory` of in-process :class:`RateLimiter` objects, one per name.

    The limits hold within this process only: the SQLite store's limiters, and an adapter's
    when it runs outside a runtime.
    """

    def __init__(self) -> None:
        self._limiters: dict[str, RateLimiter] = {}

    def __call__(self, name: str, rate: float, per: float = 1.0, burst: int | None = None) -> RateLimiter:
        limiter = self._limiters.get(name)
        if limiter is None:
            limiter = self._limiters[name] = RateLimiter(rate, per, burst)
        return limiter
