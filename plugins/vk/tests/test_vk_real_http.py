"""The adapter and FakeVK over real HTTP on loopback: form and multipart bodies, uploads and Long Poll on the wire."""

from __future__ import annotations

from collections.abc import Sequence

import httpx
import pytest
import structlog
from amoconnect.adapter import AdapterContext
from amoconnect.model import Attachment, InboundEvent, InboundMessage, OutgoingMessage
from amoconnect.testing.fakes import ClientMedia
from amoconnect.testing.kit import LOOPBACK_NETWORKS, eventually
from amoconnect.testing.servers import serve_app
from amoconnect.urlguard import UrlGuard, parse_networks
from vk_rig import MemoryState, running

from amoconnect_vk.adapter import VKAdapter, VKSettings
from amoconnect_vk.fake import FakeVK

pytestmark = pytest.mark.anyio


async def test_uploads_and_long_poll_over_real_http(fake: FakeVK) -> None:
    submitted: list[InboundEvent] = []

    async def submit(events: Sequence[InboundEvent]) -> None:
        submitted.extend(events)

    async with serve_app(fake) as api_url, httpx.AsyncClient() as http:
        settings = VKSettings(**fake.settings(api_url, mode="longpoll", configure=True, longpoll_wait=1))
        context = AdapterContext(
            instance="main",
            http=http,
            log=structlog.get_logger("amoconnect.vk"),
            state=MemoryState(),
            submit=submit,
            url_guard=UrlGuard(parse_networks(LOOPBACK_NETWORKS)),  # the fake serves files on loopback
        )
        adapter = VKAdapter(settings, context)
        await adapter.startup()
        async with running(adapter):
            await eventually(lambda: fake.calls_to("groups.getLongPollServer"))
            await fake.client_writes(8, "Привет!", media=ClientMedia(kind="picture", content=b"\x89PNG a photo"))
            await eventually(lambda: submitted)
        (message,) = submitted
        assert isinstance(message, InboundMessage) and message.text == "Привет!"
        assert message.attachments[0].fetch is not None
        photo_url = message.attachments[0].fetch
        assert (await adapter.fetch_media(photo_url)).content == b"\x89PNG a photo"
        picture = Attachment(kind="picture", url=photo_url, file_name="photo.png")
        text = "Ответ «с кавычками» & символами\n" * 200
        result = await adapter.send_message(
            OutgoingMessage(chat="8", text=text, attachments=(picture,), dedup_key="real-1")
        )
    assert len(result.message_ids) == 2
    first, second = fake.received(8)
    assert first.kind == "picture" and first.text + "\n" + second.text == text
