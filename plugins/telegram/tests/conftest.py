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
from amoconnect.testing.kit import rig_guard

from amoconnect_telegram.adapter import TelegramAdapter, TelegramSettings
from amoconnect_telegram.fake import FakeTelegram

sys.path.insert(0, str(Path(__file__).parent))

from telegram_peer import check_call, check_update
from telegram_rig import API, PUBLIC, Files, HostRouter, MemoryState, Receiver, Rig


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def files() -> Files:
    return Files()


@pytest.fixture
def fake(files: Files) -> Iterator[FakeTelegram]:
    """A fake Bot API; at the end every update it made and every request it got is checked with aiogram."""
    fetch = httpx.AsyncClient(transport=httpx.MockTransport(files.handler))
    telegram = FakeTelegram(fetch_http=fetch, delivery_backoff=0.01)
    yield telegram
    for update in telegram.updates:
        check_update(update)
    for call in telegram.calls:
        if call.status == 200:
            check_call(call.method, call.params, call.files)


@pytest.fixture
async def http(fake: FakeTelegram, files: Files) -> AsyncIterator[httpx.AsyncClient]:
    """The adapter's HTTP client: the fake at api.telegram.test, media at files.test."""
    router = HostRouter(
        {
            "api.telegram.test": httpx.ASGITransport(app=fake),
            "files.test": httpx.MockTransport(files.handler),
        }
    )
    async with httpx.AsyncClient(transport=router) as client:
        yield client


@pytest.fixture
def make_adapter(http: httpx.AsyncClient, fake: FakeTelegram) -> Callable[..., Rig]:
    def make(
        *, state: MemoryState | None = None, public_url: str | None = PUBLIC, submit: Any = None, **settings: Any
    ) -> Rig:
        state = state or MemoryState()
        submitted: list[InboundEvent] = []

        async def collect(events: Sequence[InboundEvent]) -> None:
            submitted.extend(events)

        config = TelegramSettings(**{"token": fake.token, "api_url": API, **settings})
        context = AdapterContext(
            instance="main",
            http=http,
            log=structlog.get_logger("amoconnect.telegram").bind(instance="main"),
            state=state,
            submit=submit or collect,
            public_url=public_url,
            url_guard=rig_guard(),
        )
        adapter = TelegramAdapter(config, context)
        receiver = Receiver()
        receiver.adapter = adapter
        fake.http = httpx.AsyncClient(transport=httpx.ASGITransport(app=receiver))
        return Rig(adapter, state, submitted, receiver)

    return make
