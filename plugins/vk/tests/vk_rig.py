"""Helpers of the VK plugin's tests: in-memory state, amoCRM's files, a miniature connector endpoint."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
from amoconnect.adapter import WebhookRequest
from amoconnect.errors import SignatureError, WebhookError
from amoconnect.model import InboundEvent
from starlette.requests import Request
from starlette.responses import Response

from amoconnect_vk.adapter import VKAdapter

API = "http://api.vk.test"
FILES = "http://files.test"
PUBLIC = "http://connector.test/hooks/vk/main"
SECRET = "callback-secret"


class MemoryState:
    """The adapter's StateStore, in memory."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    async def get(self, key: str) -> bytes | None:
        return self.data.get(key)

    async def set(self, key: str, value: bytes) -> None:
        self.data[key] = value

    async def delete(self, key: str) -> None:
        self.data.pop(key, None)


class Files:
    """Media amoCRM would serve: path → (bytes, content type); every request is recorded."""

    def __init__(self) -> None:
        self.content: dict[str, tuple[bytes, str]] = {
            "/cat.jpg": (b"\xff\xd8\xff jpeg bytes", "image/jpeg"),
            "/notes.png": (b"not really a png", "image/png"),
            "/report.pdf": (b"%PDF-1.4 pdf bytes", "application/pdf"),
            "/note.ogg": (b"OggS voice", "audio/ogg"),
            "/clip.mp4": (b"mp4 bytes", "video/mp4"),
        }
        self.requests: list[str] = []

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request.url.path)
        found = self.content.get(request.url.path)
        if found is None:
            return httpx.Response(404, text="not found")
        return httpx.Response(200, content=found[0], headers={"content-type": found[1]})


class Receiver:
    """The connector's webhook endpoint in miniature: verify, parse, collect, answer as the runtime does."""

    def __init__(self) -> None:
        self.adapter: VKAdapter | None = None
        self.events: list[InboundEvent] = []
        self.seen: set[str] = set()
        self.refused = 0
        self.status = 200
        """Answer with this status instead (an overloaded connector: 503)."""
        self.retry_after: str | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        request = Request(scope, receive)
        assert self.adapter is not None
        hook = WebhookRequest(
            method=request.method, headers=httpx.Headers(request.headers.raw), body=await request.body()
        )
        if self.status != 200:
            headers = {"Retry-After": self.retry_after} if self.retry_after else None
            await Response(status_code=self.status, headers=headers)(scope, receive, send)
            return
        try:
            early = await self.adapter.verify(hook)
            if early is not None:
                await Response(early.body, status_code=early.status)(scope, receive, send)
                return
            for event in await self.adapter.parse(hook):
                if event.dedup_key not in self.seen:  # the core's dedup keys
                    self.seen.add(event.dedup_key)
                    self.events.append(event)
        except SignatureError:
            self.refused += 1
            await Response(status_code=401)(scope, receive, send)
            return
        except WebhookError:
            await Response(status_code=400)(scope, receive, send)
            return
        ack = self.adapter.webhook_ack
        await Response(ack.body, status_code=ack.status)(scope, receive, send)


class Rig:
    """An adapter wired to the fake, with what it submitted (long poll) and what reached the endpoint."""

    def __init__(
        self, adapter: VKAdapter, state: MemoryState, submitted: list[InboundEvent], receiver: Receiver
    ) -> None:
        self.adapter = adapter
        self.state = state
        self.submitted = submitted
        self.receiver = receiver

    @property
    def events(self) -> list[InboundEvent]:
        """Events of Callback API requests, each once."""
        return self.receiver.events


@contextlib.asynccontextmanager
async def running(adapter: VKAdapter) -> AsyncIterator[None]:
    """The adapter's ``run()`` in the background for the duration of the block."""
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(adapter.run)
        yield
        tasks.cancel_scope.cancel()
