from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from amoconnect.adapter import AdapterContext
from amoconnect.model import InboundEvent
from amoconnect.testing.kit import HostRouter, rig_guard

from amoconnect_vk.adapter import VKAdapter, VKSettings
from amoconnect_vk.fake import FakeVK

sys.path.insert(0, str(Path(__file__).parent))

from vk_peer import peer_check
from vk_rig import API, PUBLIC, SECRET, Files, MemoryState, Receiver, Rig


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _quick(monkeypatch: pytest.MonkeyPatch) -> None:
    """Background pauses of the adapter, a hundred times shorter."""
    monkeypatch.setattr(VKAdapter, "retry_pause", 0.01)
    monkeypatch.setattr(VKAdapter, "api_rate", 500.0)


@pytest.fixture
def files() -> Files:
    return Files()


@pytest.fixture
def fake() -> Iterator[FakeVK]:
    """A fake VK; at the end every event it emitted and every call it answered is checked with vkbottle-types."""
    vk = FakeVK(delivery_backoff=0.01, longpoll_max_wait=0.2)
    yield vk
    peer_check(vk)


@pytest.fixture
async def http(fake: FakeVK, files: Files) -> AsyncIterator[httpx.AsyncClient]:
    """The adapter's HTTP client: the fake at api.vk.test, amoCRM's media at files.test."""
    router = HostRouter({"api.vk.test": fake, "files.test": httpx.MockTransport(files.handler)})
    async with httpx.AsyncClient(transport=router) as client:
        yield client


@pytest.fixture
def make_adapter(http: httpx.AsyncClient, fake: FakeVK) -> Callable[..., Rig]:
    """An adapter on the fake; in callback mode the fake's Callback API server is the miniature endpoint."""

    def make(
        *,
        state: MemoryState | None = None,
        public_url: str | None = PUBLIC,
        server: bool = True,
        **settings: Any,
    ) -> Rig:
        state = state or MemoryState()
        submitted: list[InboundEvent] = []

        async def collect(events: Sequence[InboundEvent]) -> None:
            submitted.extend(events)

        options: dict[str, Any] = {"token": fake.token, "group_id": fake.group_id, "api_url": API, "secret": SECRET}
        config = VKSettings(**{**options, **settings})
        context = AdapterContext(
            instance="main",
            http=http,
            log=structlog.get_logger("amoconnect.vk").bind(instance="main"),
            state=state,
            submit=collect,
            public_url=public_url,
            url_guard=rig_guard(),
        )
        adapter = VKAdapter(config, context)
        receiver = Receiver()
        receiver.adapter = adapter
        fake.http = httpx.AsyncClient(transport=httpx.ASGITransport(app=receiver))
        if server and config.mode == "callback" and not config.configure:
            fake.add_callback_server(PUBLIC, secret=SECRET)
        return Rig(adapter, state, submitted, receiver)

    return make
