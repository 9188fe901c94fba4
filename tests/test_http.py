"""The shared outbound HTTP layer: Retry-After, backoff, the per-host in-flight cap, the retry loop."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from amoconnect.errors import AmoCRMError, AmojoError, ConfigError, RemoteError
from amoconnect.http import (
    HostLimiter,
    RetryPolicy,
    build_transport,
    new_client,
    parse_retry_after,
    send_with_retries,
)
from amoconnect.testing.servers import serve_app

pytestmark = pytest.mark.anyio

FAST = RetryPolicy(attempts=3, backoff=0.001, max_backoff=0.004)


# -- parse_retry_after ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("120", 120.0), ("0", 0.0), ("1.5", 1.5), (" 7 ", 7.0), ("-3", 0.0)],
)
def test_parse_retry_after_seconds(value: str, seconds: float) -> None:
    assert parse_retry_after(value) == seconds


def test_parse_retry_after_http_date_in_the_future() -> None:
    when = datetime.now(UTC) + timedelta(seconds=30)
    seconds = parse_retry_after(format_datetime(when, usegmt=True))
    assert seconds is not None and 28 <= seconds <= 30


def test_parse_retry_after_http_date_with_numeric_zone() -> None:
    when = datetime.now(UTC) + timedelta(seconds=60)
    seconds = parse_retry_after(format_datetime(when))  # "+0000" rather than "GMT"
    assert seconds is not None and 58 <= seconds <= 60


def test_parse_retry_after_http_date_in_the_past_is_zero() -> None:
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


@pytest.mark.parametrize("value", [None, "", "   ", "soon", "0x10", "1 2", "Wed, 99 Foo 2015 07:28:00 GMT", "12s"])
def test_parse_retry_after_garbage_is_none(value: str | None) -> None:
    assert parse_retry_after(value) is None


def test_parse_retry_after_nan_is_none() -> None:
    assert parse_retry_after("nan") is None


# -- RetryPolicy.delay -----------------------------------------------------------------------------------


@given(
    attempt=st.integers(min_value=1, max_value=60),
    backoff=st.floats(min_value=0.001, max_value=5.0),
    max_backoff=st.floats(min_value=0.001, max_value=60.0),
)
def test_delay_is_full_jitter_within_half_ceiling_and_ceiling(attempt: int, backoff: float, max_backoff: float) -> None:
    policy = RetryPolicy(backoff=backoff, max_backoff=max_backoff)
    ceiling = min(max_backoff, backoff * 2 ** (attempt - 1))
    delay = policy.delay(attempt)
    assert ceiling / 2 <= delay <= ceiling * (1 + 1e-12)
    assert delay <= max_backoff * (1 + 1e-12)


def test_delay_doubles_per_attempt_until_the_cap() -> None:
    policy = RetryPolicy(backoff=0.5, max_backoff=3.0)
    for attempt, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 3.0), (5, 3.0), (30, 3.0)]:
        samples = [policy.delay(attempt) for _ in range(200)]
        assert all(ceiling / 2 <= s <= ceiling for s in samples), (attempt, min(samples), max(samples))
        assert max(samples) - min(samples) > 0  # jittered, not a fixed value


def test_delay_stays_capped_for_a_very_large_attempt_number() -> None:
    assert RetryPolicy(max_backoff=30.0).delay(2000) <= 30.0


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [(7.0, 7.0), (0.0, 0.0), (-5.0, 0.0), (60.0, 60.0), (1000.0, 300.0), (float("inf"), 300.0)],
)
def test_delay_honours_retry_after_up_to_its_cap(retry_after: float, expected: float) -> None:
    policy = RetryPolicy(max_backoff=30.0, max_retry_after=300.0)
    assert policy.delay(1, retry_after) == expected
    assert policy.delay(4, retry_after) == expected  # the attempt number does not matter then


def test_retry_policy_refuses_unknown_fields() -> None:
    with pytest.raises(TypeError):
        RetryPolicy(retries=3)  # type: ignore[call-arg]


# -- HostLimiter ----------------------------------------------------------------------------------------


class ConcurrencyApp:
    """A slow ASGI app that counts requests in flight, per Host header and in total."""

    def __init__(self, delay: float = 0.02) -> None:
        self.delay = delay
        self.in_flight: Counter[str] = Counter()
        self.max_seen: Counter[str] = Counter()
        self.max_total = 0
        self.served = 0

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http":
            return
        host = dict(scope["headers"])[b"host"].decode()
        self.in_flight[host] += 1
        self.max_seen[host] = max(self.max_seen[host], self.in_flight[host])
        self.max_total = max(self.max_total, sum(self.in_flight.values()))
        try:
            await anyio.sleep(self.delay)
        finally:
            self.in_flight[host] -= 1
        self.served += 1
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok"})


async def _fire(client: httpx.AsyncClient, urls: list[str]) -> list[int]:
    statuses: list[int] = []

    async def one(url: str) -> None:
        statuses.append((await client.get(url)).status_code)

    async with anyio.create_task_group() as tg:
        for url in urls:
            tg.start_soon(one, url)
    return statuses


async def test_host_limiter_caps_requests_in_flight_per_host() -> None:
    app = ConcurrencyApp()
    async with httpx.AsyncClient(transport=HostLimiter(httpx.ASGITransport(app=app), 4)) as client:
        statuses = await _fire(client, ["http://a.test/x"] * 20)
    assert statuses == [200] * 20
    assert app.max_seen["a.test"] == 4


async def test_without_the_limiter_the_same_load_goes_wide() -> None:
    """The control for the test above: the app does see more than 4 at once when nothing caps it."""
    app = ConcurrencyApp()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as client:
        await _fire(client, ["http://a.test/x"] * 20)
    assert app.max_seen["a.test"] > 4


async def test_host_limiter_gives_each_host_its_own_cap() -> None:
    app = ConcurrencyApp()
    async with httpx.AsyncClient(transport=HostLimiter(httpx.ASGITransport(app=app), 4)) as client:
        statuses = await _fire(client, ["http://a.test/x", "http://b.test/x"] * 20)
    assert statuses == [200] * 40
    assert app.max_seen["a.test"] == 4
    assert app.max_seen["b.test"] == 4
    assert app.max_total == 8  # one busy host does not hold back the other


async def test_host_limiter_keys_on_port_too() -> None:
    app = ConcurrencyApp()
    async with httpx.AsyncClient(transport=HostLimiter(httpx.ASGITransport(app=app), 2)) as client:
        await _fire(client, ["http://a.test:8001/x", "http://a.test:8002/x"] * 6)
    assert app.max_seen["a.test:8001"] == 2
    assert app.max_seen["a.test:8002"] == 2


async def test_host_limiter_releases_its_slot_when_the_inner_transport_fails() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        raise httpx.ConnectError("refused", request=request)

    async with httpx.AsyncClient(transport=HostLimiter(httpx.MockTransport(handler), 1)) as client:
        for _ in range(3):
            with anyio.fail_after(1), pytest.raises(httpx.ConnectError):
                await client.get("http://a.test/")
    assert calls == 3


async def test_responses_through_the_limiter_keep_their_elapsed_time() -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b"o"
        yield b"k"

    limiter = HostLimiter(httpx.MockTransport(lambda request: httpx.Response(200, content=body())), 1)
    async with httpx.AsyncClient(transport=limiter) as client:
        response = await client.get("http://a.test/")
        assert response.text == "ok"
        assert response.elapsed.total_seconds() >= 0
        # The slot came back when the body was read: a second request does not wait forever.
        with anyio.fail_after(2):
            assert (await client.get("http://a.test/")).text == "ok"


@pytest.mark.parametrize("cap", [0, -1])
def test_host_limiter_refuses_a_cap_below_one(cap: int) -> None:
    with pytest.raises(ConfigError, match="max_in_flight_per_host"):
        HostLimiter(httpx.MockTransport(lambda r: httpx.Response(200)), cap)


@pytest.mark.parametrize("kind", ["httpx", "aiohttp"])
async def test_built_transport_caps_in_flight_over_a_real_port(kind: Any) -> None:
    app = ConcurrencyApp()
    async with serve_app(app) as url, new_client(url, transport=kind, max_in_flight_per_host=3) as client:
        statuses = await _fire(client, ["/x"] * 15)
    assert statuses == [200] * 15
    assert app.served == 15
    assert 1 <= max(app.max_seen.values()) <= 3


# -- build_transport / new_client ------------------------------------------------------------------------


def test_build_transport_refuses_an_unknown_kind() -> None:
    with pytest.raises(ConfigError, match="'nope'"):
        build_transport("nope")  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["httpx", "aiohttp"])
async def test_build_transport_wraps_every_kind_in_a_limiter(kind: Any) -> None:
    transport = build_transport(kind, max_in_flight_per_host=5)
    assert isinstance(transport, HostLimiter)
    await transport.aclose()


async def test_new_client_uses_a_given_transport_as_is() -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(200, text=str(request.url)))
    async with new_client("http://remote.test", transport=transport, timeout=3.0) as client:
        response = await client.get("/path")
        assert response.text == "http://remote.test/path"
        assert client.timeout == httpx.Timeout(3.0)


# -- send_with_retries -------------------------------------------------------------------------------------


class Script:
    """A MockTransport handler answering from a list of statuses (or exceptions) in turn."""

    def __init__(self, *answers: int | type[httpx.TransportError], retry_after: str | None = None) -> None:
        self.answers = list(answers)
        self.retry_after = retry_after
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if not isinstance(answer, int):
            raise answer("no route to host", request=request)
        headers = {"Retry-After": self.retry_after} if self.retry_after is not None and answer == 429 else {}
        return httpx.Response(answer, json={"code": f"c{answer}", "status": answer}, headers=headers)


class Builder:
    """A ``build`` callable that makes a fresh, numbered request every time."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.built: list[httpx.Request] = []

    def __call__(self) -> httpx.Request:
        request = self.client.build_request(
            "POST", "http://remote.test/send", content=b"{}", headers={"X-Attempt": str(len(self.built) + 1)}
        )
        self.built.append(request)
        return request


async def test_retries_5xx_and_429_then_returns_the_success() -> None:
    script = Script(503, 429, 500, 200)
    async with httpx.AsyncClient(transport=httpx.MockTransport(script)) as client:
        build = Builder(client)
        response = await send_with_retries(client, build, policy=RetryPolicy(attempts=5, backoff=0.001))
    assert response.status_code == 200
    assert len(script.requests) == 4


async def test_a_fresh_request_is_built_for_every_attempt() -> None:
    script = Script(503, 503, 200)
    async with httpx.AsyncClient(transport=httpx.MockTransport(script)) as client:
        build = Builder(client)
        await send_with_retries(client, build, policy=FAST)
    assert len(build.built) == 3
    assert len({id(request) for request in build.built}) == 3
    assert [r.headers["X-Attempt"] for r in script.requests] == ["1", "2", "3"]


async def test_on_retry_gets_attempt_wait_and_status() -> None:
    script = Script(503, 429, httpx.ConnectError, 200, retry_after="0")
    calls: list[tuple[int, float, int | None]] = []
    async with httpx.AsyncClient(transport=httpx.MockTransport(script)) as client:
        await send_with_retries(
            client, Builder(client), policy=RetryPolicy(attempts=5, backoff=0.002), on_retry=lambda *a: calls.append(a)
        )
    assert [(attempt, status) for attempt, _, status in calls] == [(1, 503), (2, 429), (3, None)]
    assert 0.001 <= calls[0][1] <= 0.002  # jittered backoff after attempt 1
    assert calls[1][1] == 0.0  # Retry-After: 0 honoured
    assert 0.004 <= calls[2][1] <= 0.008  # attempt 3's ceiling is 4x the first


async def test_an_async_on_retry_is_awaited() -> None:
    script = Script(502, 200)
    seen: list[int] = []

    async def on_retry(attempt: int, wait: float, status: int | None) -> None:
        await anyio.lowlevel.checkpoint()
        seen.append(attempt)

    async with httpx.AsyncClient(transport=httpx.MockTransport(script)) as client:
        await send_with_retries(client, Builder(client), policy=FAST, on_retry=on_retry)
    assert seen == [1]


async def test_retry_after_is_honoured_and_capped() -> None:
    script = Script(429, 200, retry_after="3600")
    waits: list[float] = []
    policy = RetryPolicy(attempts=2, backoff=0.001, max_retry_after=0.01)
    async with httpx.AsyncClient(transport=httpx.MockTransport(script)) as client:
        await send_with_retries(client, Builder(client), policy=policy, on_retry=lambda a, w, s: waits.append(w))
    assert waits == [0.01]


@pytest.mark.parametrize("status", [200, 201, 204, 301, 400, 401, 403, 404, 409, 422])
async def test_other_statuses_are_returned_without_retry(status: int) -> None:
    script = Script(status)
    async with httpx.AsyncClient(transport=httpx.MockTransport(script)) as client:
        response = await send_with_retries(client, Builder(client), policy=FAST)
    assert response.status_code == status
    assert len(script.requests) == 1


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
async def test_a_storm_ends_in_a_typed_error_after_the_attempts(status: int) -> None:
    script = Script(status)
    async with httpx.AsyncClient(transport=httpx.MockTransport(script)) as client:
        with pytest.raises(AmoCRMError) as caught:
            await send_with_retries(client, Builder(client), policy=FAST, error=AmoCRMError, describe="list sources")
    assert len(script.requests) == FAST.attempts
    error = caught.value
    assert error.status == status
    assert error.body == {"code": f"c{status}", "status": status}
    assert error.retryable
    assert (
        str(error)
        == f"amoCRM REST API list sources failed after 3 attempts: HTTP {status} (POST http://remote.test/send)"
    )


@pytest.mark.parametrize(("header", "expected"), [("7", 7.0), ("100000", 300.0), (None, None)])
async def test_the_error_after_the_attempts_carries_the_last_retry_after(header: str | None, expected: float) -> None:
    script = Script(429, retry_after=header)
    async with httpx.AsyncClient(transport=httpx.MockTransport(script)) as client:
        with pytest.raises(AmojoError) as caught:
            await send_with_retries(client, Builder(client), policy=RetryPolicy(attempts=1), error=AmojoError)
    assert caught.value.retry_after == expected  # capped at max_retry_after, as the waits are


async def test_transport_errors_are_retried_then_raise_with_no_status() -> None:
    script = Script(httpx.ConnectError)
    async with httpx.AsyncClient(transport=httpx.MockTransport(script)) as client:
        with pytest.raises(AmojoError) as caught:
            await send_with_retries(client, Builder(client), policy=FAST, error=AmojoError, describe="send")
    assert len(script.requests) == 3
    assert caught.value.status is None
    assert caught.value.body is None
    assert caught.value.retryable
    assert str(caught.value) == (
        "amojo send failed after 3 attempts: ConnectError: no route to host (POST http://remote.test/send)"
    )


async def test_read_timeouts_are_retried() -> None:
    script = Script(httpx.ReadTimeout, 200)
    async with httpx.AsyncClient(transport=httpx.MockTransport(script)) as client:
        response = await send_with_retries(client, Builder(client), policy=FAST)
    assert response.status_code == 200
    assert len(script.requests) == 2


async def test_a_non_json_error_body_is_kept_as_text() -> None:
    async with httpx.AsyncClient(transport=httpx.MockTransport(lambda r: httpx.Response(502, text="Bad gateway"))) as c:
        with pytest.raises(RemoteError) as caught:
            await send_with_retries(c, Builder(c), policy=RetryPolicy(attempts=1))
    assert caught.value.body == "Bad gateway"
    assert caught.value.status == 502


async def test_one_attempt_means_no_retry() -> None:
    script = Script(503, 200)
    async with httpx.AsyncClient(transport=httpx.MockTransport(script)) as client:
        with pytest.raises(RemoteError, match="after 1 attempt: HTTP 503"):
            await send_with_retries(client, Builder(client), policy=RetryPolicy(attempts=1))
    assert len(script.requests) == 1


async def test_retries_wait_between_attempts() -> None:
    script = Script(503, 503, 200)
    policy = RetryPolicy(attempts=3, backoff=0.02, max_backoff=0.02)
    async with httpx.AsyncClient(transport=httpx.MockTransport(script)) as client:
        started = anyio.current_time()
        await send_with_retries(client, Builder(client), policy=policy)
        elapsed = anyio.current_time() - started
    assert elapsed >= 0.02  # two waits of at least 0.01 s each


async def test_a_nan_retry_after_does_not_escape_as_a_value_error() -> None:
    script = Script(429, 200, retry_after="nan")
    async with httpx.AsyncClient(transport=httpx.MockTransport(script)) as client:
        response = await send_with_retries(client, Builder(client), policy=FAST)
    assert response.status_code == 200


class _Body(httpx.AsyncByteStream):
    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b"ok"


async def test_the_httpx_transport_spreads_requests_over_small_pools(monkeypatch: pytest.MonkeyPatch) -> None:
    from amoconnect.http import POOL_SIZE, _Pools

    pools = _Pools(2 * POOL_SIZE)
    assert len(pools._pools) == 4
    answer = anyio.Event()
    used: list[int] = []

    def handler(index: int) -> Any:
        async def handle(request: httpx.Request) -> httpx.Response:
            used.append(index)
            await answer.wait()
            if request.url.path == "/boom":
                raise httpx.ConnectError("down")
            return httpx.Response(200, stream=_Body())

        return handle

    for index, pool in enumerate(pools._pools):
        monkeypatch.setattr(pool, "handle_async_request", handler(index))
    responses: list[httpx.Response] = []

    async def one(path: str) -> None:
        with contextlib.suppress(httpx.ConnectError):
            responses.append(await pools.handle_async_request(httpx.Request("GET", f"http://h{path}")))

    async with anyio.create_task_group() as tg:
        for path in ("/a", "/b", "/c", "/boom"):
            tg.start_soon(one, path)
        await anyio.wait_all_tasks_blocked()
        assert sorted(used) == [0, 1, 2, 3]  # each to the least busy pool
        answer.set()
    assert sorted(pools._busy) == [0, 1, 1, 1]  # the failed request gave its slot back
    for response in responses:
        await response.aread()
        await response.aclose()
    assert pools._busy == [0, 0, 0, 0]


async def test_a_direct_client_sends_straight_to_its_transport() -> None:
    from amoconnect.http import new_client

    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, headers={"Set-Cookie": "a=1"}, stream=_Body())

    async with new_client(transport=httpx.MockTransport(handle), timeout=3.0, direct=True) as client:
        response = await client.send(httpx.Request("POST", "http://h/x", content=b"{}"))
        assert (response.status_code, response.content, response.request.url.path) == (200, b"ok", "/x")
        assert response.is_closed
        assert seen[0].extensions["timeout"]["read"] == 3.0
        assert not client.cookies  # no jar: nothing of the answer is kept
        async with client.stream("GET", "http://h/y") as streamed:  # httpx's own path
            assert await streamed.aread() == b"ok"
        assert client.cookies["a"] == "1"
    with pytest.raises(RuntimeError, match="closed"):
        await client.send(httpx.Request("GET", "http://h/z"))


class BigAnswer:
    """An ASGI app answering ``size`` bytes in 64 KiB chunks (saying how many in ``Content-Length`` if ``length``)."""

    def __init__(self, size: int, *, length: bool = False) -> None:
        self.size = size
        self.length = length

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http":
            return
        headers = [(b"content-type", b"text/plain")]
        if self.length:
            headers.append((b"content-length", str(self.size).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        left = self.size
        while left > 0:
            chunk = min(left, 65536)
            left -= chunk
            await send({"type": "http.response.body", "body": b"x" * chunk, "more_body": left > 0})


@pytest.mark.parametrize("length", [False, True], ids=["chunked", "content-length"])
async def test_a_direct_aiohttp_client_reads_whole_answers_up_to_its_cap(
    monkeypatch: pytest.MonkeyPatch, length: bool
) -> None:
    import amoconnect.http as http

    monkeypatch.setattr(http, "WHOLE_BODY_LIMIT", 300_000)
    async with (
        serve_app(BigAnswer(300_000, length=length)) as url,
        new_client(url, transport="aiohttp", direct=True) as client,
    ):
        response = await client.send(httpx.Request("GET", f"{url}/x"))
        # In memory at once: the in-flight slot is free before the caller reads anything.
        assert isinstance(response.stream, httpx.ByteStream)
        assert (response.status_code, len(response.content)) == (200, 300_000)
        again = await client.send(httpx.Request("GET", f"{url}/x"))  # the connection went back to the pool
        assert len(again.content) == 300_000
    async with (
        serve_app(BigAnswer(300_001, length=length)) as url,
        new_client(url, transport="aiohttp", direct=True) as client,
    ):
        with pytest.raises(httpx.ReadError, match="over 300000 bytes"):
            await client.send(httpx.Request("GET", f"{url}/x"))
        limiter = client._transport
        assert isinstance(limiter, HostLimiter)
        assert all(s.value == 32 for s in limiter._semaphores.values())  # the slot came back


async def test_every_pool_shares_one_tls_context() -> None:
    from amoconnect.http import _Pools, tls_context

    # Each context loads the CA bundle (~30 ms): one per pool made start-up take a second.
    limiter = build_transport("httpx", max_in_flight_per_host=32)
    assert isinstance(limiter, HostLimiter)
    pools = limiter._inner
    assert isinstance(pools, _Pools)
    assert len(pools._pools) == 16
    assert {id(p._pool._ssl_context) for p in pools._pools} == {id(tls_context())}
    await limiter.aclose()
