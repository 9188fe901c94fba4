"""Helpers of the Telegram plugin's tests: in-memory state, media host, routing, a webhook receiver."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
from amoconnect.adapter import WebhookRequest
from amoconnect.errors import SignatureError
from amoconnect.model import InboundEvent
from amoconnect.testing.fakes import MemoryState
from amoconnect.testing.kit import HostRouter as HostRouter
from starlette.requests import Request
from starlette.responses import Response

from amoconnect_telegram.adapter import TelegramAdapter

API = "http://api.telegram.test"
FILES = "http://files.test"
PUBLIC = "http://connector.test/hooks/telegram/main"


class Files:
    """Media amoCRM would serve: path → (bytes, content type); every request is recorded."""

    def __init__(self) -> None:
        self.content: dict[str, tuple[bytes, str]] = {
            "/cat.jpg": (b"\xff\xd8\xff jpeg bytes", "image/jpeg"),
            "/report.pdf": (b"%PDF-1.4 pdf bytes", "application/pdf"),
            "/clip.mp4": (b"mp4 bytes", "video/mp4"),
            "/note.ogg": (b"OggS voice", "audio/ogg"),
            "/song.mp3": (b"ID3 mp3", "audio/mpeg"),
            "/sticker.webp": (b"RIFF webp", "image/webp"),
        }
        self.requests: list[str] = []

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request.url.path)
        found = self.content.get(request.url.path)
        if found is None:
            return httpx.Response(404, text="not found")
        return httpx.Response(200, content=found[0], headers={"content-type": found[1]})


class Receiver:
    """The connector's webhook endpoint, in miniature: verify, parse, collect; 401 on a bad secret."""

    def __init__(self) -> None:
        self.adapter: TelegramAdapter | None = None
        self.events: list[InboundEvent] = []
        self.refused = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        request = Request(scope, receive)
        assert self.adapter is not None
        hook = WebhookRequest(
            method=request.method, headers=httpx.Headers(request.headers.raw), body=await request.body()
        )
        try:
            await self.adapter.verify(hook)
            self.events.extend(await self.adapter.parse(hook))
        except SignatureError:
            self.refused += 1
            await Response(status_code=401)(scope, receive, send)
            return
        await Response(status_code=200)(scope, receive, send)


class Rig:
    """An adapter wired to the fake, with what it submitted."""

    def __init__(
        self, adapter: TelegramAdapter, state: MemoryState, submitted: list[InboundEvent], receiver: Receiver
    ) -> None:
        self.adapter = adapter
        self.state = state
        self.submitted = submitted
        self.receiver = receiver

    @property
    def events(self) -> list[InboundEvent]:
        """Events of webhook updates."""
        return self.receiver.events


@contextlib.asynccontextmanager
async def running(adapter: TelegramAdapter) -> AsyncIterator[None]:
    """The adapter's ``run()`` in the background for the duration of the block."""
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(adapter.run)
        yield
        tasks.cancel_scope.cancel()
