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

from amoconnect_whatsapp.adapter import WhatsAppAdapter, WhatsAppSettings
from amoconnect_whatsapp.fake import FakeWhatsApp

sys.path.insert(0, str(Path(__file__).parent))

from whatsapp_peer import peer_check
from whatsapp_rig import API, APP_SECRET, PUBLIC, VERIFY, Files, HostRouter, MemoryState, Receiver, Rig


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _quick(monkeypatch: pytest.MonkeyPatch) -> None:
    """Background pauses of the adapter, a hundred times shorter."""
    monkeypatch.setattr(WhatsAppAdapter, "webhook_delay", 0.0)
    monkeypatch.setattr(WhatsAppAdapter, "retry_pause", 0.05)


@pytest.fixture
def files() -> Files:
    return Files()


@pytest.fixture
def fake(files: Files) -> Iterator[FakeWhatsApp]:
    """A fake Graph API with one number; at the end its webhooks and our requests are checked by the peer."""
    fetch = httpx.AsyncClient(transport=httpx.MockTransport(files.public_handler))
    whatsapp = FakeWhatsApp(app_secret=APP_SECRET, fetch_http=fetch, delivery_backoff=0.01, auto_statuses=())
    whatsapp.add_number("1000000001", waba_id="2000000001", token="token-one")
    yield whatsapp
    peer_check(whatsapp)


@pytest.fixture
async def http(fake: FakeWhatsApp, files: Files) -> AsyncIterator[httpx.AsyncClient]:
    """The adapter's HTTP client: the fake at graph.test, media at files.test."""
    router = HostRouter(
        {"graph.test": httpx.ASGITransport(app=fake.app), "files.test": httpx.MockTransport(files.handler)}
    )
    async with httpx.AsyncClient(transport=router) as client:
        yield client


@pytest.fixture
def make_adapter(http: httpx.AsyncClient, fake: FakeWhatsApp) -> Callable[..., Rig]:
    def make(*, state: MemoryState | None = None, public_url: str | None = PUBLIC, **settings: Any) -> Rig:
        state = state or MemoryState()
        submitted: list[InboundEvent] = []

        async def collect(events: Sequence[InboundEvent]) -> None:
            submitted.extend(events)

        number = fake.numbers["1000000001"]
        config = WhatsAppSettings(
            **{
                "phone_number_id": number.phone_number_id,
                "waba_id": number.waba_id,
                "token": number.token,
                "app_secret": APP_SECRET,
                "verify_token": VERIFY,
                "api_url": API,
                **settings,
            }
        )
        context = AdapterContext(
            instance="main",
            http=http,
            log=structlog.get_logger("amoconnect.whatsapp").bind(instance="main"),
            state=state,
            submit=collect,
            public_url=public_url,
            url_guard=rig_guard(),
        )
        adapter = WhatsAppAdapter(config, context)
        receiver = Receiver()
        receiver.adapter = adapter
        fake.http = httpx.AsyncClient(transport=HostRouter({"connector.test": httpx.ASGITransport(app=receiver)}))
        fake.set_webhook(PUBLIC, phone_number_id=number.phone_number_id, waba_id=number.waba_id)
        return Rig(adapter, state, submitted, receiver)

    return make
