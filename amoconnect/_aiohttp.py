"""``httpx-aiohttp``'s transport, sending every URL exactly as httpx built it (imported lazily: aiohttp is heavy).

The library hands aiohttp ``str(request.url)``, which yarl parses again and normalises:
``/chats/shop%3A1`` goes out as ``/chats/shop:1``. The request-target on the wire would then
differ from the one the ``httpx`` transport sends for the same request, and from the path an
amojo signature covers. httpx has encoded the URL already, so it is handed over as a
``yarl.URL(..., encoded=True)``, which aiohttp sends as is.
"""

from __future__ import annotations

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport
from httpx_aiohttp.transport import AiohttpResponseStream, map_aiohttp_exceptions
from yarl import URL

__all__ = ["ExactAiohttpTransport"]


class ExactAiohttpTransport(AiohttpTransport):
    """``AiohttpTransport`` whose requests go out with the very request-target httpx encoded."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        # httpx-aiohttp 0.2's own method (no proxy: the connector configures none), the URL passed encoded.
        if not isinstance(self.client, aiohttp.ClientSession):
            self.client = self.get_client()
        timeout = request.extensions.get("timeout", {})
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
                url=URL(str(request.url), encoded=True),
                headers=request.headers,
                data=data,
                allow_redirects=False,
                auto_decompress=False,
                compress=False,
                timeout=aiohttp.ClientTimeout(
                    sock_connect=timeout.get("connect"), sock_read=timeout.get("read"), connect=timeout.get("pool")
                ),
                server_hostname=request.extensions.get("sni_hostname"),
            ).__aenter__()
        extensions = {"http_version": b"HTTP/1.1"}
        if response.reason:
            extensions["reason_phrase"] = response.reason.encode()
        return httpx.Response(
            response.status,
            headers=response.raw_headers,
            stream=AiohttpResponseStream(response),
            request=request,
            extensions=extensions,
        )
