"""Rate limits the store hands out: shared by name, and on PostgreSQL by every process of the fleet."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from rig import ACCOUNT, rig

from amoconnect.amocrm import DEFAULT_RATE
from amoconnect.core import AMOCRM_LIMIT
from amoconnect.errors import ConfigError
from amoconnect.ratelimit import Limiter
from amoconnect.store.base import Store
from amoconnect.testing.stores import table_rows

pytestmark = pytest.mark.anyio


@pytest.fixture
async def fleet(postgres: str) -> AsyncIterator[list[Store]]:
    """Three stores on one schema, each with its own pool: three processes of a fleet."""
    from amoconnect.store.postgres import PostgresStore
    from amoconnect.testing.stores import fresh_postgres_schema

    url = fresh_postgres_schema(postgres)
    async with PostgresStore(url) as a, PostgresStore(url) as b, PostgresStore(url) as c:
        yield [a, b, c]


# -- every backend ---------------------------------------------------------------------
async def test_one_name_is_one_limit_and_keys_and_names_are_independent(store: Store) -> None:
    first = store.limiter("test:bot:chat", 1, 10.0, burst=1)
    again = store.limiter("test:bot:chat", 1, 10.0, burst=1)
    other = store.limiter("test:bot:instance", 1, 10.0, burst=1)
    await first.acquire("c1")
    assert await again.wait_time("c1") == pytest.approx(10.0, abs=0.5)
    assert await again.wait_time("c2") == 0.0
    assert await other.wait_time("c1") == 0.0
    with anyio.fail_after(1):  # another key and another name have their own slots
        await again.acquire("c2")
        await other.acquire("c1")


async def test_penalize_holds_the_key_then_the_steady_rate(store: Store) -> None:
    limiter = store.limiter("test:penalty", 100, 1.0, burst=100)
    await limiter.penalize("k", 0.2)
    await limiter.penalize("k", 0)  # no-op
    assert await limiter.wait_time("k") == pytest.approx(0.2, abs=0.05)
    started = time.monotonic()
    await limiter.acquire("k")
    await limiter.acquire("k")
    # No burst after a penalty: the second slot comes one interval after the first.
    assert time.monotonic() - started >= 0.19


async def test_bad_rates_are_config_errors(store: Store) -> None:
    with pytest.raises(ConfigError, match="rate limit"):
        store.limiter("test:bad", 0, 1.0)


# -- PostgreSQL: the fleet ---------------------------------------------------------------
async def _hammer(limiters: list[Limiter], key: str, window: float) -> int:
    """Acquire ``key`` from two tasks per limiter until ``window`` ends; the grants that fell inside it."""
    granted = 0
    end = time.monotonic() + window

    async def take(limiter: Limiter) -> None:
        nonlocal granted
        with anyio.move_on_after(window):
            while True:
                await limiter.acquire(key)
                if time.monotonic() <= end:
                    granted += 1

    async with anyio.create_task_group() as tg:
        for limiter in limiters:
            tg.start_soon(take, limiter)
            tg.start_soon(take, limiter)
    return granted


async def test_the_rate_holds_across_processes(fleet: list[Store]) -> None:
    rate, burst, window = 40.0, 4, 0.5
    limiters = [s.limiter("test:bot:instance", rate, 1.0, burst=burst) for s in fleet]
    granted = await _hammer(limiters, "", window)
    allowed = burst + rate * window  # 24; three processes on their own would take about 3 × 24
    assert 0.6 * allowed <= granted <= allowed + 1


async def test_keys_stay_independent_across_processes(fleet: list[Store]) -> None:
    a, b, _ = (s.limiter("test:bot:chat", 1, 60.0, burst=1) for s in fleet)
    await a.acquire("c1")
    with anyio.fail_after(1):
        await b.acquire("c2")
    assert await b.wait_time("c1") > 50


async def test_a_penalty_is_seen_by_every_process(fleet: list[Store]) -> None:
    a, b, c = (s.limiter("amocrm:account", 100, 1.0, burst=1) for s in fleet)
    await a.penalize("acme", 0.3)
    assert await b.wait_time("acme") == pytest.approx(0.3, abs=0.1)
    started = time.monotonic()
    await c.acquire("acme")
    assert time.monotonic() - started >= 0.25


async def test_a_penalty_during_a_wait_moves_the_sleeper(fleet: list[Store]) -> None:
    a, b, _ = (s.limiter("test:bot:chat", 5, 1.0, burst=1) for s in fleet)
    await b.acquire("k")
    started = time.monotonic()
    async with anyio.create_task_group() as tg:
        tg.start_soon(b.acquire, "k")  # reserves the slot at +0.2 s and sleeps
        await anyio.sleep(0.05)
        await a.penalize("k", 0.5)  # another process hears a 429
    assert time.monotonic() - started >= 0.5


async def test_delay_takes_the_slot_for_later(fleet: list[Store]) -> None:
    a, b, _ = (s.limiter("test:retry", 1, 1.0, burst=1) for s in fleet)
    await a.acquire("k", delay=2.0)  # the action happens 2 s from now: no wait
    assert await b.wait_time("k") == pytest.approx(3.0, abs=0.2)


async def test_idle_rows_are_pruned_and_busy_ones_kept(fleet: list[Store]) -> None:
    from amoconnect.store.postgres import PostgresStore

    store = fleet[0]
    assert isinstance(store, PostgresStore)
    fast = store.limiter("test:fast", 1000, 1.0, burst=1)
    slow = store.limiter("test:slow", 1, 60.0, burst=1)
    for key in ("a", "b", "c"):
        await fast.acquire(key)
    await slow.acquire("busy")
    await anyio.sleep(0.01)  # past the fast keys' theoretical arrival time
    assert await store.prune_limits() == 3
    assert table_rows(store, "rate_limits", "name, key") == [("test:slow", "busy")]
    assert await slow.wait_time("busy") > 50


# -- the runtime -----------------------------------------------------------------------
async def test_the_runtime_takes_every_limit_from_the_store(tmp_path: Path) -> None:
    """Declared limits, the adapter's own and the REST client's are the store's (the backend of the run)."""
    accounts = [{"name": "main", "amojo_id": ACCOUNT, "rest_url": "http://amocrm.test"}]
    async with rig(tmp_path, accounts=accounts) as r:
        store = r.runtime.store
        instance = r.runtime.routing.get("lb")
        assert instance is not None
        # The loopback messenger declares RateLimit(count=1000, per=1.0) for the instance.
        await instance.penalize("c1", 5.0)
        declared = store.limiter("loopback:lb:instance:1000/1s", 1000, 1.0)
        assert await declared.wait_time("") == pytest.approx(5.0, abs=0.5)

        own = r.adapter().context.limiter("uploads", 1, 60.0, burst=1)
        await own.acquire("f1")
        assert await store.limiter("loopback:lb:uploads", 1, 60.0, burst=1).wait_time("f1") > 50

        rest = r.runtime.core.rest(r.runtime.config.accounts[0])
        await rest.limiter.acquire(rest.limit_key)
        account_limit = store.limiter(AMOCRM_LIMIT, DEFAULT_RATE, 1.0, burst=1)
        assert await account_limit.wait_time(rest.limit_key) > 0
        # An adapter's own REST client takes the same limit: the core's call just now holds it back.
        assert await r.adapter().context.amocrm_limiter.wait_time(rest.limit_key) > 0
