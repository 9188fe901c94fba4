"""The ``aiohttp`` transport: httpx's requests sent by an aiohttp session (imported lazily: aiohttp is heavy).

Built on ``httpx-aiohttp``'s transport (its session, connection limits and TLS context), with
two changes:

- Every URL goes out exactly as httpx built it. The library hands aiohttp ``str(request.url)``,
  which yarl parses again and normalises: ``/chats/shop%3A1`` would go out as ``/chats/shop:1``,
  a request-target other than the one the ``httpx`` transport sends and the path an amojo
  signature covers. httpx has encoded the URL already, so it is passed as
  ``yarl.URL(..., encoded=True)``, which aiohttp sends as is.
- With ``max_body`` (a client of short answers, such as amojo's), each answer is read whole by
  aiohttp and handed to httpx as bytes, its connection released at once: no stream wrappers of
  httpx and the library around every chunk (a fifth of the amojo client's CPU per call). An
  answer over ``max_body`` bytes is an :class:`httpx.ReadError`.

:meth:`ExactAiohttpTransport.exchange` is that whole-answer path without httpx's request and
response objects, for :class:`amoconnect.http.DirectSender` (the amojo client's).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport
from httpx_aiohttp.transport import AiohttpResponseStream, map_aiohttp_exceptions
from multidict import CIMultiDictProxy
from yarl import URL

__all__ = ["ExactAiohttpTransport"]


@functools.lru_cache(maxsize=256)
def _encoded(url: str) -> URL:
    """``url`` as aiohttp sends it: exactly as given (httpx encoded it), parsed once."""
    return URL(url, encoded=True)


_HTTP11 = {"http_version": b"HTTP/1.1"}


class ExactAiohttpTransport(AiohttpTransport):
    """``AiohttpTransport`` whose requests go out with the very request-target httpx encoded."""

    def __init__(self, *, max_body: int | None = None, **options: Any) -> None:
        super().__init__(**options)
        self.max_body = max_body
        self._timeouts: dict[tuple[float | None, ...], aiohttp.ClientTimeout] = {}

    def _timeout(self, request: httpx.Request) -> aiohttp.ClientTimeout:
        return self._timeout_of(request.extensions.get("timeout", {}))

    def _timeout_of(self, given: Mapping[str, float | None]) -> aiohttp.ClientTimeout:
        key = (given.get("connect"), given.get("read"), given.get("pool"))
        timeout = self._timeouts.get(key)
        if timeout is None:
            timeout = self._timeouts[key] = aiohttp.ClientTimeout(sock_connect=key[0], sock_read=key[1], connect=key[2])
        return timeout

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        # httpx-aiohttp 0.2's own method (no proxy: the connector configures none), the URL passed encoded.
        if not isinstance(self.client, aiohttp.ClientSession):
            self.client = self.get_client()
        data: bytes | httpx.AsyncByteStream | None
        try:
            data = request.content or None
        except httpx.RequestNotRead:
            assert isinstance(request.stream, httpx.AsyncByteStream)
            data = request.stream
            request.headers.pop("transfer-encoding", None)  # aiohttp frames the body itself
        with map_aiohttp_exceptions():
            response = await self.client.request(
                method=request.method,
                url=_encoded(str(request.url)),
                # Pairs of text, not httpx's Headers: aiohttp reads a mapping key by key, and each
                # lookup in Headers decodes its raw bytes again.
                headers=[(key.decode("latin-1"), value.decode("latin-1")) for key, value in request.headers.raw],
                data=data,
                allow_redirects=False,
                auto_decompress=False,
                compress=False,
                timeout=self._timeout(request),
                server_hostname=request.extensions.get("sni_hostname"),
            ).__aenter__()
            extensions = {**_HTTP11, "reason_phrase": response.reason.encode()} if response.reason else _HTTP11
            if self.max_body is None:
                return httpx.Response(
                    response.status,
                    headers=response.raw_headers,
                    stream=AiohttpResponseStream(response),
                    request=request,
                    extensions=extensions,
                )
            try:
                body = await self._whole(request, response, self.max_body)
            finally:
                response.release()
        return httpx.Response(
            response.status, headers=response.raw_headers, content=body, request=request, extensions=extensions
        )

    async def exchange(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes, limits: Mapping[str, float | None]
    ) -> tuple[int, CIMultiDictProxy[str], bytes]:
        """Send a request (``url`` encoded already, as httpx encodes it) and read its answer whole, up
        to ``max_body`` bytes: its status, headers and body. ``limits`` are httpx's timeouts
        (``httpx.Timeout.as_dict()``); aiohttp's errors come out as httpx's."""
        assert self.max_body is not None, "exchange reads whole answers: build the transport with max_body"
        if not isinstance(self.client, aiohttp.ClientSession):
            self.client = self.get_client()
        with map_aiohttp_exceptions():
            response = await self.client.request(
                method,
                _encoded(url),
                headers=headers,
                data=body or None,
                allow_redirects=False,
                compress=False,
                timeout=self._timeout_of(limits),
            ).__aenter__()
            try:
                content = await self._whole(url, response, self.max_body)
            finally:
                response.release()
        return response.status, response.headers, content

    @staticmethod
    async def _whole(request: httpx.Request | str, response: aiohttp.ClientResponse, limit: int) -> bytes:
        """The answer's body, read at once when it says its length, else chunk by chunk up to ``limit``."""
        if response.content_length is not None and response.content_length <= limit:
            return await response.read()
        body = bytearray()
        async for chunk in response.content.iter_any():
            body += chunk
            if len(body) > limit:
                if isinstance(request, str):
                    raise httpx.ReadError(f"answer of {URL(request).host} over {limit} bytes")
                raise httpx.ReadError(f"answer of {request.url.host} over {limit} bytes", request=request)
        return bytes(body)
