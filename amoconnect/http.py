"""Outbound HTTP shared by every client: transports, a per-host in-flight cap, bounded retries.

httpx is the API everywhere. Its default pool (httpcore) degrades past a few concurrent
requests (the ``"httpx"`` transport therefore spreads requests over several small pools), so
the transport is a setting: ``"httpx"`` (httpcore, no extra dependency) or
``"aiohttp"`` (the ``httpx-aiohttp`` transport, several times faster under concurrency, and the
default of the configuration). Either way a :class:`HostLimiter` caps requests in flight
per host so that one slow remote cannot swallow every connection.

:func:`send_with_retries` is the one retry loop: exponential backoff with full jitter,
``Retry-After`` honoured, a fresh request (and so a fresh signature) built for every attempt,
and a bounded number of attempts after which a typed :class:`~amoconnect.errors.RemoteError`
is raised.

:class:`DirectSender` is the amojo client's way out: requests of known bytes whose answers are
short, read whole. On the ``aiohttp`` transport it sends them through the aiohttp session itself
(same per-host cap, TLS context and URL encoding), without building httpx's request and response
objects around every call, which cost as much CPU as aiohttp's own work.
"""

from __future__ import annotations

import functools
import math
import random
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

import anyio
import httpx
import msgspec
import structlog

from .errors import ConfigError, RemoteError

if TYPE_CHECKING:
    from ._aiohttp import ExactAiohttpTransport

__all__ = [
    "Answer",
    "DirectClient",
    "DirectSender",
    "HostLimiter",
    "OnRetry",
    "Outgoing",
    "RetryPolicy",
    "TransportKind",
    "build_transport",
    "error_body",
    "new_client",
    "parse_retry_after",
    "send_with_retries",
    "tls_context",
]

TransportKind = Literal["httpx", "aiohttp"]
OnRetry = Callable[[int, float, int | None], Awaitable[None] | None]
"""``on_retry(attempt, wait, status)``: called before a failed attempt is repeated (``status`` None: no answer)."""

log = structlog.get_logger("amoconnect.http")

POOL_SIZE = 4
"""Connections in each of the ``httpx`` transport's pools (see :class:`_Pools`)."""


class RetryPolicy(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How often and how patiently to retry a request that failed in a retryable way."""

    attempts: int = 5
    """Total attempts, the first one included (1 = never retry)."""
    backoff: float = 0.25
    """Upper bound of the first delay in seconds; it doubles with every attempt (full jitter)."""
    max_backoff: float = 30.0
    """No computed delay is longer than this."""
    max_retry_after: float = 300.0
    """A server's ``Retry-After`` above this is cut to it."""

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        if retry_after is not None and not math.isnan(retry_after):
            return min(max(retry_after, 0.0), self.max_retry_after)
        # Cap the exponent too: 2 ** 1100 overflows a float long before any cap would apply.
        ceiling = min(self.max_backoff, self.backoff * (2 ** min(attempt - 1, 64)))
        return random.uniform(ceiling / 2, ceiling)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date); ``None`` if absent or bad."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(seconds, 0.0) if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - datetime.now(UTC)).total_seconds(), 0.0)


class _HostSlots:
    """A semaphore of ``limit`` slots per host (scheme, host and port)."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ConfigError(f"max_in_flight_per_host must be at least 1, got {limit}")
        self._limit = limit
        self._semaphores: dict[tuple[bytes, bytes, int | None], anyio.Semaphore] = {}

    def _semaphore(self, url: httpx.URL) -> anyio.Semaphore:
        key = (url.raw_scheme, url.raw_host, url.port)
        semaphore = self._semaphores.get(key)
        if semaphore is None:
            # fast_acquire: a free slot is taken without a trip through the event loop; the request yields anyway.
            semaphore = self._semaphores[key] = anyio.Semaphore(self._limit, fast_acquire=True)
        return semaphore


class HostLimiter(_HostSlots, httpx.AsyncBaseTransport):
    """Wraps a transport and caps the requests in flight to any one host."""

    def __init__(self, inner: httpx.AsyncBaseTransport, max_in_flight_per_host: int) -> None:
        super().__init__(max_in_flight_per_host)
        self._inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        semaphore = self._semaphore(request.url)
        await semaphore.acquire()
        try:
            response = await self._inner.handle_async_request(request)
        except BaseException:
            semaphore.release()
            raise
        if isinstance(response.stream, httpx.ByteStream):  # the body is in memory already
            semaphore.release()
        else:
            # The slot is held until the body is read and closed: the connection stays busy until then.
            response.stream = _Releasing(response.stream, semaphore.release)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


class _Pools(httpx.AsyncBaseTransport):
    """httpcore's transport as several small pools, each request going to the least busy one.

    httpcore (1.0.9) scans every connection of its pool on each request and each answer, so
    its CPU per request grows with the connections in use: measured here, 5.2 ms per relayed
    message with 32 in flight against 2.3 ms with 4. Pools of :data:`POOL_SIZE` keep the scan
    short at any in-flight cap.
    """

    def __init__(self, max_in_flight: int) -> None:
        limits = httpx.Limits(max_connections=POOL_SIZE, max_keepalive_connections=POOL_SIZE)
        # As many connections in all as one pool had before: twice the in-flight cap.
        count = -(-2 * max_in_flight // POOL_SIZE)
        self._pools = [httpx.AsyncHTTPTransport(limits=limits, verify=tls_context()) for _ in range(count)]
        self._busy = [0] * len(self._pools)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        index = self._busy.index(min(self._busy))
        self._busy[index] += 1

        def release() -> None:
            self._busy[index] -= 1

        try:
            response = await self._pools[index].handle_async_request(request)
        except BaseException:
            release()
            raise
        response.stream = _Releasing(response.stream, release)
        return response

    async def aclose(self) -> None:
        for pool in self._pools:
            await pool.aclose()


class _Releasing(httpx.AsyncByteStream):
    """A response body that calls ``release`` (gives back an in-flight slot) when it is closed."""

    def __init__(self, stream: httpx.SyncByteStream | httpx.AsyncByteStream, release: Callable[[], None]) -> None:
        assert isinstance(stream, httpx.AsyncByteStream)
        self._stream = stream
        self._release: Callable[[], None] | None = release

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            release, self._release = self._release, None
            if release is not None:
                release()


WHOLE_BODY_LIMIT = 16 * 1024 * 1024
"""The largest answer a client of short answers (``whole_bodies``) reads."""


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The TLS context every transport of the process shares (httpx's defaults: certifi's CAs).

    Making one loads and parses the CA bundle, some 30 ms: a context per pool made start-up
    take a second.
    """
    return httpx.create_ssl_context()


def build_transport(
    kind: TransportKind = "httpx", *, max_in_flight_per_host: int = 32, whole_bodies: bool = False
) -> httpx.AsyncBaseTransport:
    """A transport of the given kind behind a per-host in-flight cap.

    ``whole_bodies`` (``aiohttp`` only) reads every answer at once, for an API whose answers are
    short (:data:`WHOLE_BODY_LIMIT` at most); streamed downloads need it off.
    """
    inner: httpx.AsyncBaseTransport
    if kind == "httpx":
        inner = _Pools(max_in_flight_per_host)
    elif kind == "aiohttp":
        inner = _aiohttp_transport(max_in_flight_per_host, whole_bodies=whole_bodies)
    else:
        raise ConfigError(f"unknown HTTP transport {kind!r}; expected 'httpx' or 'aiohttp'")
    return HostLimiter(inner, max_in_flight_per_host)


def _aiohttp_transport(max_in_flight_per_host: int, *, whole_bodies: bool) -> ExactAiohttpTransport:
    try:
        from ._aiohttp import ExactAiohttpTransport
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        raise ConfigError("transport 'aiohttp' needs the httpx-aiohttp package: pip install httpx-aiohttp") from exc
    # The in-flight cap bounds connections per host.
    limits = httpx.Limits(max_connections=max_in_flight_per_host * 2, max_keepalive_connections=max_in_flight_per_host)
    return ExactAiohttpTransport(
        limits=limits, verify=tls_context(), max_body=WHOLE_BODY_LIMIT if whole_bodies else None
    )


def new_client(
    base_url: str = "",
    *,
    transport: TransportKind | httpx.AsyncBaseTransport = "httpx",
    timeout: float = 10.0,
    max_in_flight_per_host: int = 32,
    direct: bool = False,
) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` on the chosen transport; pass a transport object to use it as is.

    ``direct`` makes a :class:`DirectClient`, for a client that never needs cookies or redirects.
    """
    if isinstance(transport, str):
        transport = build_transport(transport, max_in_flight_per_host=max_in_flight_per_host, whole_bodies=direct)
    if direct:
        return DirectClient(base_url=base_url, transport=transport, timeout=timeout)
    return httpx.AsyncClient(base_url=base_url, transport=transport, timeout=timeout)


class DirectClient(httpx.AsyncClient):
    """An ``httpx.AsyncClient`` whose :meth:`send` hands a request straight to its transport.

    It keeps no cookies and follows no redirects (``send(stream=True)``, ``auth`` or
    ``follow_redirects`` take httpx's own path). httpx's layers for them parse every answer
    into a cookie jar among other things: about a third of the client's CPU per amojo call.
    """

    def __init__(self, *, base_url: str, transport: httpx.AsyncBaseTransport, timeout: float) -> None:
        super().__init__(base_url=base_url, transport=transport, timeout=timeout)
        self._direct = transport

    async def send(
        self,
        request: httpx.Request,
        *,
        stream: bool = False,
        auth: Any = httpx.USE_CLIENT_DEFAULT,
        follow_redirects: Any = httpx.USE_CLIENT_DEFAULT,
    ) -> httpx.Response:
        if stream or auth is not httpx.USE_CLIENT_DEFAULT or follow_redirects is not httpx.USE_CLIENT_DEFAULT:
            return await super().send(request, stream=stream, auth=auth, follow_redirects=follow_redirects)
        if self.is_closed:
            raise RuntimeError("Cannot send a request, as the client has been closed.")
        request.extensions.setdefault("timeout", self.timeout.as_dict())
        response = await self._direct.handle_async_request(request)
        response.request = request
        try:
            await response.aread()
        finally:
            await response.aclose()
        return response


@dataclass(slots=True)
class Outgoing:
    """A request of a :class:`DirectSender`: its bytes are known before it is sent."""

    method: str
    url: httpx.URL
    headers: dict[str, str]
    content: bytes = b""


class _Headers(Protocol):
    def get(self, key: str, /) -> str | None: ...


@dataclass(slots=True)
class Answer:
    """An answer read whole, by a :class:`DirectSender`."""

    status_code: int
    headers: _Headers
    """Case-insensitive: ``headers.get("date")``."""
    content: bytes
    request: Outgoing

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        """The body decoded as JSON (``ValueError`` when it is not)."""
        try:
            return msgspec.json.decode(self.content)
        except msgspec.DecodeError as exc:
            raise ValueError(str(exc)) from exc


class DirectSender:
    """Sends :class:`Outgoing` requests and reads each answer whole (at most :data:`WHOLE_BODY_LIMIT`).

    With ``client`` (an ``httpx.AsyncClient``, for one injected by tests or transport ``httpx``) a
    request becomes an ``httpx.Request``; otherwise on transport ``aiohttp`` it goes to the aiohttp
    session directly, behind the same per-host in-flight cap. Network errors are httpx's either way.
    """

    def __init__(
        self,
        *,
        client: httpx.AsyncClient | None = None,
        transport: TransportKind = "httpx",
        timeout: float = 10.0,
        max_in_flight_per_host: int = 32,
    ) -> None:
        self._owns_client = client is None
        self._aiohttp: ExactAiohttpTransport | None = None
        self._client: httpx.AsyncClient | None = client
        if client is None and transport == "aiohttp":
            self._slots = _HostSlots(max_in_flight_per_host)
            self._aiohttp = _aiohttp_transport(max_in_flight_per_host, whole_bodies=True)
            self._timeout = httpx.Timeout(timeout).as_dict()
        elif client is None:
            self._client = new_client(
                transport=transport, timeout=timeout, max_in_flight_per_host=max_in_flight_per_host, direct=True
            )

    async def send(self, request: Outgoing) -> Answer:
        if self._aiohttp is None:
            assert self._client is not None
            response = await self._client.send(
                httpx.Request(request.method, request.url, content=request.content, headers=request.headers)
            )
            return Answer(response.status_code, response.headers, response.content, request)
        semaphore = self._slots._semaphore(request.url)
        async with semaphore:
            status, headers, content = await self._aiohttp.exchange(
                request.method, str(request.url), request.headers, request.content, self._timeout
            )
        return Answer(status, headers, content, request)

    async def aclose(self) -> None:
        """Close what this sender built (a given client stays open)."""
        if not self._owns_client:
            return
        if self._aiohttp is not None:
            await self._aiohttp.aclose()
        elif self._client is not None:
            await self._client.aclose()


class _Answer(Protocol):
    @property
    def status_code(self) -> int: ...
    @property
    def headers(self) -> _Headers: ...
    @property
    def text(self) -> str: ...
    def json(self) -> Any: ...


class _Request(Protocol):
    @property
    def method(self) -> str: ...
    @property
    def url(self) -> httpx.URL: ...


Q = TypeVar("Q", bound=_Request)
R = TypeVar("R", bound=_Answer)
_Q_in = TypeVar("_Q_in", bound=_Request, contravariant=True)
_R_out = TypeVar("_R_out", bound=_Answer, covariant=True)


class _Sends(Protocol[_Q_in, _R_out]):
    async def send(self, request: _Q_in, /) -> _R_out: ...


def error_body(response: _Answer) -> Any:
    """An error answer's body: decoded JSON when it is JSON, else the text."""
    try:
        return response.json()
    except ValueError:
        return response.text


async def send_with_retries(
    client: _Sends[Q, R],
    build: Callable[[], Q],
    *,
    policy: RetryPolicy,
    error: type[RemoteError] = RemoteError,
    describe: str = "request",
    on_retry: OnRetry | None = None,
) -> R:
    """Send the request ``build()`` makes, retrying transport errors, 429 and 5xx.

    ``client`` is an ``httpx.AsyncClient`` (``httpx.Request`` in, ``httpx.Response`` out) or a
    :class:`DirectSender` (:class:`Outgoing` in, :class:`Answer` out).

    ``build`` is called again for every attempt, so each attempt carries fresh headers
    (a fresh ``Date`` and signature for amojo). Any other status is returned to the caller,
    which decides what a 4xx means. When the attempts run out, ``error`` is raised carrying
    the last status and body (status ``None`` if no answer ever came, the transport error then its
    ``__cause__``) and the last ``Retry-After`` (capped like the waits), so that whoever retries the
    whole job later still honours it; its message names the method and the URL (without the query).
    """
    attempt = 0
    while True:
        attempt += 1
        request = build()
        status: int | None = None
        retry_after: float | None = None
        cause: httpx.TransportError | None = None
        try:
            response = await client.send(request)
        except httpx.TransportError as exc:
            problem: str = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            body: object = None
            cause = exc
        else:
            if response.status_code != 429 and response.status_code < 500:
                return response
            status = response.status_code
            body = error_body(response)
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            problem = f"HTTP {status}"
        if attempt >= policy.attempts:
            attempts = f"{attempt} attempt{'s' if attempt > 1 else ''}"
            raise error(
                f"{error.service} {describe} failed after {attempts}: {problem} "
                f"({request.method} {request.url.copy_with(query=None)})",
                status=status,
                body=body,
                retry_after=None if retry_after is None else policy.delay(attempt, retry_after),
            ) from cause
        wait = policy.delay(attempt, retry_after)
        log.warning(
            "retrying",
            request=f"{error.service} {describe}",
            host=request.url.netloc.decode("ascii"),
            attempt=attempt,
            problem=problem,
            wait_s=round(wait, 3),
        )
        if on_retry is not None:
            result = on_retry(attempt, wait, status)
            if result is not None:
                await result
        await anyio.sleep(wait)
