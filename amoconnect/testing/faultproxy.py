"""A fault-injecting reverse proxy on a loopback port, between amoconnect and a fake (amojo, a messenger's API).

::

    proxy = FaultProxy(amojo_url, seed=7, rate_limited=0.10, server_error=0.05, slow=0.01, dropped=0.02,
                       error=fake_amojo.error_response)
    async with proxy.serve() as url:      # amoconnect's amojo_url
        ...
        proxy.enabled = False             # faults off: every request is forwarded as is
    proxy.injected                        # Counter({"rate_limited": 31, "server_error": 14, ...})

Each request draws once from a seeded RNG, with the probabilities given per kind (:data:`FAULTS`):

- ``rate_limited``: answered 429, ``error(429, retry_after)`` (the upstream's own error shape;
  :func:`json_error` by default, with a ``Retry-After`` header);
- ``server_error``: answered 500, ``error(500, None)``;
- ``slow``: forwarded after ``delay`` seconds;
- ``dropped``: the request is read, then the connection closed without an answer;
- ``lost_answer``: forwarded, the upstream acts on it, then the connection is closed before the
  answer (the caller cannot tell whether the request took effect).

Otherwise the request is forwarded faithfully: method, path, query, headers (signatures
included) and body one way, status, headers and body the other.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from http import HTTPStatus
from typing import Final

import anyio
import httpx
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from .servers import serve_app

__all__ = ["FAULTS", "ErrorAnswer", "FaultProxy", "json_error"]

FAULTS: Final = ("rate_limited", "server_error", "slow", "dropped", "lost_answer")
"""The kinds of fault, in the order the RNG's draw is matched against their probabilities."""

ErrorAnswer = Callable[[int, float | None], Response]
"""``(status, retry_after) -> response``: an error answer in the upstream service's shape."""

# Per-connection headers are not forwarded; uvicorn sets its own Date and Server.
_NOT_FORWARDED = frozenset(
    {b"connection", b"keep-alive", b"transfer-encoding", b"te", b"upgrade", b"host", b"content-length"}
)
_NOT_RETURNED = _NOT_FORWARDED | {b"date", b"server"}


def json_error(status: int, retry_after: float | None = None) -> Response:
    """A generic error answer: ``{"error": <reason phrase>}``, with ``Retry-After`` when given."""
    headers = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else None
    return JSONResponse({"error": HTTPStatus(status).phrase}, status, headers=headers)


async def _body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def _hang_up(receive: Receive, send: Send) -> None:
    """Close the connection without answering (uvicorn's ``send`` is bound to its request cycle)."""
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    if transport is None:
        raise RuntimeError("FaultProxy drops connections only when served by uvicorn (serve())")
    transport.close()
    while (await receive())["type"] != "http.disconnect":
        pass  # returning before the server saw the disconnect would make it answer 500


class FaultProxy:
    """A reverse proxy to ``upstream`` (a base URL) that injects faults; an ASGI app, served by :meth:`serve`.

    Probabilities are per request, per kind; ``seed`` makes a run repeatable. ``retry_after``
    is the 429s' wait in seconds, ``delay`` the ``slow`` requests'. ``enabled`` switches the
    faults off and on at any time, as :attr:`odds` (kind → probability) changes them;
    :attr:`injected` counts what was injected, by kind (:attr:`injected_on`: by kind and HTTP
    method), and :attr:`forwarded` the requests that reached the upstream.
    """

    def __init__(
        self,
        upstream: str,
        *,
        seed: int = 0,
        rate_limited: float = 0.0,
        server_error: float = 0.0,
        slow: float = 0.0,
        dropped: float = 0.0,
        lost_answer: float = 0.0,
        retry_after: float = 1.0,
        delay: float = 3.0,
        error: ErrorAnswer = json_error,
        enabled: bool = True,
    ) -> None:
        self.upstream = httpx.URL(upstream)
        self.odds = dict(zip(FAULTS, (rate_limited, server_error, slow, dropped, lost_answer), strict=True))
        if sum(self.odds.values()) > 1:
            raise ValueError(f"the fault probabilities add up to more than 1: {self.odds}")
        self.retry_after = retry_after
        self.delay = delay
        self.error = error
        self.enabled = enabled
        self.injected: Counter[str] = Counter()
        self.injected_on: Counter[tuple[str, str]] = Counter()
        self.forwarded = 0
        self._rng = random.Random(seed)
        self._client: httpx.AsyncClient | None = None

    @asynccontextmanager
    async def serve(self) -> AsyncIterator[str]:
        """Serve the proxy on a free loopback port (see :func:`~amoconnect.testing.servers.serve_app`); its base URL."""
        async with httpx.AsyncClient(timeout=None) as client:
            self._client = client
            try:
                async with serve_app(self) as url:
                    yield url
            finally:
                self._client = None

    def _draw(self, method: str) -> str | None:
        if not self.enabled:
            return None
        point, edge = self._rng.random(), 0.0
        for kind, odds in self.odds.items():
            edge += odds
            if point < edge:
                self.injected[kind] += 1
                self.injected_on[kind, method] += 1
                return kind
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        fault = self._draw(scope["method"])
        body = await _body(receive)
        if fault in ("rate_limited", "server_error"):
            status = 429 if fault == "rate_limited" else 500
            await self.error(status, self.retry_after if status == 429 else None)(scope, receive, send)
            return
        if fault == "dropped":
            await _hang_up(receive, send)
            return
        if fault == "slow":
            await anyio.sleep(self.delay)
        response = await self._forward(scope, body)
        if fault == "lost_answer":
            await _hang_up(receive, send)
            return
        await response(scope, receive, send)

    async def _forward(self, scope: Scope, body: bytes) -> Response:
        assert self._client is not None, "serve the proxy with serve()"
        path = scope.get("raw_path") or scope["path"].encode()
        query = scope.get("query_string", b"")
        target = self.upstream.raw_path.rstrip(b"/") + path + (b"?" + query if query else b"")
        url = self.upstream.copy_with(raw_path=target)
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in _NOT_FORWARDED]
        try:
            # A bare Request: the client would add its own default headers (Accept, User-Agent...).
            request = httpx.Request(scope["method"], url, headers=headers, content=body)
            answer = await self._client.send(request, stream=True)
            try:
                content = b"".join([chunk async for chunk in answer.aiter_raw()])
            finally:
                await answer.aclose()
        except httpx.TransportError:
            return self.error(502, None)
        self.forwarded += 1
        response = Response(content, answer.status_code)
        response.raw_headers = [
            *((k, v) for k, v in answer.headers.raw if k.lower() not in _NOT_RETURNED),
            (b"content-length", str(len(content)).encode()),
        ]
        return response
