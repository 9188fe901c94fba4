from __future__ import annotations

import time

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from amoconnect.errors import ConfigError
from amoconnect.ratelimit import RateLimiter
from amoconnect.testing.fake_amocrm import ManualClock


def limiter_on(clock: ManualClock, rate: float, per: float = 1.0, burst: int | None = None) -> RateLimiter:
    return RateLimiter(rate, per, burst, clock=clock, sleep=clock.sleep)


@pytest.mark.anyio
async def test_burst_then_steady_rate() -> None:
    clock = ManualClock(0.0)
    limiter = limiter_on(clock, 2, 1.0, burst=2)
    times = []
    for _ in range(5):
        await limiter.acquire("k")
        times.append(clock.now)
    assert times == pytest.approx([0.0, 0.0, 0.5, 1.0, 1.5])


@pytest.mark.anyio
async def test_default_burst_is_rate_and_burst_one_spaces_evenly() -> None:
    assert RateLimiter(7).burst == 7
    assert RateLimiter(0.5).burst == 1
    clock = ManualClock(0.0)
    limiter = limiter_on(clock, 4, burst=1)
    times = []
    for _ in range(4):
        await limiter.acquire()
        times.append(clock.now)
    assert times == pytest.approx([0.0, 0.25, 0.5, 0.75])


@pytest.mark.anyio
async def test_keys_have_separate_buckets() -> None:
    clock = ManualClock(0.0)
    limiter = limiter_on(clock, 1, burst=1)
    await limiter.acquire("a")
    await limiter.acquire("b")
    assert clock.now == 0.0
    await limiter.acquire("a")
    assert clock.now == pytest.approx(1.0)
    assert await limiter.wait_time("b") == 0.0


@pytest.mark.anyio
async def test_penalize_pushes_the_next_slot_back_then_no_burst() -> None:
    clock = ManualClock(0.0)
    limiter = limiter_on(clock, 10, burst=10)
    await limiter.penalize("k", 3.0)
    assert await limiter.wait_time("k") == pytest.approx(3.0)
    assert await limiter.wait_time("other") == 0.0
    await limiter.acquire("k")
    assert clock.now == pytest.approx(3.0)
    await limiter.acquire("k")
    assert clock.now == pytest.approx(3.1)
    await limiter.penalize("k", 0)  # no-op
    await limiter.penalize("k", float("nan"))  # no-op
    assert await limiter.wait_time("k") == pytest.approx(0.1)


@pytest.mark.anyio
async def test_penalty_during_a_wait_is_honoured() -> None:
    clock = ManualClock(0.0)
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 1:
            await limiter.penalize("k", 5.0)  # a 429 arrives while we wait
        await clock.sleep(seconds)

    limiter = RateLimiter(1, 1.0, burst=1, clock=clock, sleep=sleep)
    await limiter.acquire("k")
    await limiter.acquire("k")
    assert clock.now == pytest.approx(5.0)
    assert sleeps == pytest.approx([1.0, 4.0])


@pytest.mark.anyio
async def test_delay_takes_the_slot_for_a_later_moment() -> None:
    clock = ManualClock(0.0)
    limiter = limiter_on(clock, 1, burst=1)
    await limiter.acquire("k", delay=2.0)  # the action happens at t=2
    assert clock.now == 0.0
    assert await limiter.wait_time("k") == pytest.approx(3.0)
    await limiter.acquire("k", delay=1.0)  # at t=3 at the earliest: wait 2 now, act 1 later
    assert clock.now == pytest.approx(2.0)


@pytest.mark.anyio
async def test_waiters_are_served_in_arrival_order() -> None:
    clock = ManualClock(0.0)
    limiter = limiter_on(clock, 5, burst=1)
    served: list[int] = []

    async def take(i: int) -> None:
        await limiter.acquire("k")
        served.append(i)

    async with anyio.create_task_group() as tg:
        for i in range(20):
            tg.start_soon(take, i)
    assert served == list(range(20))
    assert clock.now == pytest.approx(19 / 5)


def test_try_acquire_never_waits() -> None:
    clock = ManualClock(0.0)
    limiter = limiter_on(clock, 2, burst=2)
    assert limiter.try_acquire("k")
    assert limiter.try_acquire("k")
    assert not limiter.try_acquire("k")
    clock.advance(0.5)
    assert limiter.try_acquire("k")
    assert not limiter.try_acquire("k")


@pytest.mark.anyio
async def test_try_acquire_does_not_jump_the_queue() -> None:
    limiter = RateLimiter(1, 10.0, burst=1)
    await limiter.acquire("k")
    with anyio.move_on_after(0.05):
        async with anyio.create_task_group() as tg:
            tg.start_soon(limiter.acquire, "k")
            await anyio.sleep(0.01)
            assert not limiter.try_acquire("k")
            tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_cancelled_waiter_gives_its_place_up_without_using_a_slot() -> None:
    limiter = RateLimiter(1, 10.0, burst=1)  # real clock: one slot per 10 s
    await limiter.acquire("k")
    before = await limiter.wait_time("k")
    with anyio.move_on_after(0.05) as scope:
        await limiter.acquire("k")
    assert scope.cancelled_caught
    assert await limiter.wait_time("k") == pytest.approx(before - 0.05, abs=0.05)
    assert await limiter.wait_time("k") <= before


@pytest.mark.anyio
async def test_real_clock_spacing() -> None:
    limiter = RateLimiter(50, 1.0, burst=1)
    started = time.monotonic()
    for _ in range(6):
        await limiter.acquire()
    assert time.monotonic() - started >= 5 / 50 - 0.01


@pytest.mark.anyio
async def test_idle_buckets_are_dropped() -> None:
    clock = ManualClock(0.0)
    limiter = limiter_on(clock, 1, burst=1)
    for i in range(2000):
        await limiter.acquire(f"chat-{i}")
    assert limiter.tracked_keys <= 2000
    clock.advance(10)
    for i in range(300):
        await limiter.acquire(f"later-{i}")
    assert limiter.tracked_keys < 600
    # a busy key survives a sweep
    await limiter.penalize("busy", 100)
    clock.advance(10)
    for i in range(1000):
        await limiter.acquire(f"again-{i}")
    assert await limiter.wait_time("busy") > 0


@pytest.mark.parametrize(
    ("rate", "per", "burst"),
    [(0, 1.0, None), (-1, 1.0, None), (float("inf"), 1.0, None), (1, 0.0, None), (1, float("nan"), None), (1, 1.0, 0)],
)
def test_bad_settings_are_config_errors(rate: float, per: float, burst: int | None) -> None:
    with pytest.raises(ConfigError, match="rate limit"):
        RateLimiter(rate, per, burst)


@settings(max_examples=60, deadline=None)
@given(
    rate=st.integers(1, 20),
    burst=st.integers(1, 10),
    gaps=st.lists(st.floats(0, 2, allow_nan=False), min_size=1, max_size=60),
)
def test_never_more_than_burst_plus_rate_in_any_window(rate: int, burst: int, gaps: list[float]) -> None:
    """Whatever the arrival pattern, k + burst grants span at least k intervals."""
    clock = ManualClock(0.0)
    limiter = limiter_on(clock, rate, 1.0, burst=burst)
    granted: list[float] = []

    async def run() -> None:
        for gap in gaps:
            clock.advance(gap)
            await limiter.acquire("k")
            granted.append(clock.now)

    anyio.run(run)
    interval = 1.0 / rate
    for i in range(len(granted)):
        for j in range(i + burst, len(granted)):
            assert granted[j] - granted[i] >= (j - i - burst + 1) * interval - 1e-9
