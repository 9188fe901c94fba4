"""The core's conformance suite against the WhatsApp plugin and its fake, through a small driver."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar, Literal

import httpx
import pytest
from amoconnect.model import Button, ListMessage, ListRow, ListSection
from amoconnect.testing.conformance import MessengerConformance
from amoconnect.testing.fakes import ClientMedia, ReceivedMessage, ReceivedReaction
from amoconnect.testing.kit import SAMPLE_FILES
from whatsapp_peer import peer_check

from amoconnect_whatsapp.fake import FakeWhatsApp, Sent, User

_KINDS = {"image": "picture", "video": "video", "document": "file", "audio": "voice", "sticker": "sticker"}
_LINK = re.compile(r"^(?P<text>.+): (?P<url>https?://\S+)$")


def _samples(request: httpx.Request) -> httpx.Response:
    found = SAMPLE_FILES.get(request.url.path.lstrip("/"))
    if found is None:
        return httpx.Response(404)
    return httpx.Response(200, content=found[0], headers={"content-type": found[1]})


class WhatsAppDriver:
    """:class:`FakeWhatsApp` as the conformance suite drives it: chats are phone numbers (``wa_id``)."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.fake = FakeWhatsApp.sandbox(http=http)
        next(iter(self.fake.numbers.values())).business_app = True  # coexistence: the app's sends echo
        self.fake.auto_statuses = ()
        self.fake.fetch_http = httpx.AsyncClient(transport=httpx.MockTransport(_samples))
        self.fake.add_template("order_ready", "en_US", body="Hello, {{1}}! Your order {{2}} is ready.")
        self.app = self.fake.app

    async def business_writes(self, chat: str, text: str, *, reply_to: str | None = None) -> object:
        # The WhatsApp Business app's echoes carry no quote (Meta's reference shows none).
        return await self.fake.business_app_writes(self._user(chat), text)

    def _user(self, chat: str) -> User:
        return self.fake.user(chat) or self.fake.add_user(chat, name="Conformance Client")

    def sandbox_settings(self, api_url: str) -> dict[str, Any]:
        return self.fake.sandbox_settings(api_url)

    async def sandbox_client_writes(self, chat: str, text: str) -> None:
        await self.fake.client_writes(self._user(chat), text)

    def sandbox_received(self, chat: str) -> list[str]:
        return [m.text for m in self.received(chat)]

    async def client_writes(
        self, chat: str, text: str = "", *, media: ClientMedia | None = None, reply_to: str | None = None
    ) -> object:
        user = self._user(chat)
        if media is None:
            return await self.fake.client_writes(user, text, reply_to=reply_to)
        kind = {"picture": "image", "file": "document", "voice": "audio"}.get(media.kind, media.kind)
        return await self.fake.client_sends_media(
            user, kind, media.content, media.mime_type or "application/octet-stream", caption=text
        )

    def _received(self, sent: Sent) -> ReceivedMessage:
        body = sent.body
        reply_to = (body.get("context") or {}).get("message_id")
        if sent.type == "template":
            params = [p["text"] for c in body["template"].get("components", []) for p in c["parameters"]]
            return ReceivedMessage(
                message_id=sent.wamid,
                kind="template",
                template=body["template"]["name"],
                template_params=tuple(params),
                reply_to=reply_to,
            )
        if sent.type == "interactive":
            interactive = body["interactive"]
            lines = interactive["body"]["text"].split("\n")
            links = [m for line in lines if (m := _LINK.match(line))]
            text = "\n".join(line for line in lines if not _LINK.match(line))
            urls = tuple(Button(text=m["text"], url=m["url"]) for m in links)
            action = interactive["action"]
            if interactive["type"] == "list":
                sections = tuple(
                    ListSection(
                        title=s.get("title", ""),
                        rows=tuple(
                            ListRow(callback_data=r["id"], title=r["title"], description=r.get("description", ""))
                            for r in s["rows"]
                        ),
                    )
                    for s in action["sections"]
                )
                menu = ListMessage(body=text, button=action["button"], sections=sections)
                return ReceivedMessage(message_id=sent.wamid, kind="list", text=text, list_message=menu)
            replies = tuple(Button(text=b["reply"]["title"], callback_data=b["reply"]["id"]) for b in action["buttons"])
            return ReceivedMessage(message_id=sent.wamid, text=text, buttons=(replies + urls,), reply_to=reply_to)
        if sent.type in _KINDS:
            media = body[sent.type]
            return ReceivedMessage(
                message_id=sent.wamid,
                kind=_KINDS[sent.type],
                text=media.get("caption", ""),
                media_url=media.get("link"),
                file_name=media.get("filename", ""),
                reply_to=reply_to,
            )
        return ReceivedMessage(message_id=sent.wamid, text=sent.text, reply_to=reply_to)

    def received(self, chat: str) -> Sequence[ReceivedMessage]:
        user = self.fake.user(chat)
        if user is None:
            return []
        return [
            self._received(s) for s in self.fake.sent_to(user) if s.type != "reaction" and "failed" not in s.statuses
        ]

    async def client_edits(self, chat: str, message_id: str, text: str) -> object:
        return await self.fake.client_edits(self._user(chat), message_id, text)

    async def client_presses(self, chat: str, callback_data: str) -> object:
        user = self._user(chat)
        for sent in reversed(self.fake.sent_to(user)):
            if sent.type != "interactive":
                continue
            action = sent.body["interactive"]["action"]
            ids = [r["id"] for s in action.get("sections", []) for r in s["rows"]]
            ids += [b["reply"]["id"] for b in action.get("buttons", [])]
            if callback_data in ids:
                return await self.fake.client_picks(user, sent.wamid, callback_data)
        raise LookupError(f"no button or row {callback_data!r} was sent to {chat}")

    async def client_reacts(self, chat: str, message_id: str, emoji: str, removed: bool = False) -> object:
        return await self.fake.client_reacts(self._user(chat), message_id, "" if removed else emoji)

    def received_reactions(self, chat: str) -> Sequence[ReceivedReaction]:
        user = self.fake.user(chat)
        sent = self.fake.sent_to(user) if user is not None else []
        return [
            ReceivedReaction(s.body["reaction"]["message_id"], s.body["reaction"]["emoji"])
            for s in sent
            if s.type == "reaction"
        ]

    def received_typing(self, chat: str) -> int:
        user = self.fake.user(chat)
        return sum(1 for m in self.fake.typing if user is not None and self.fake.inbound[m][1] is user)

    async def deliver_status(self, chat: str, message_id: str, status: Literal["delivered", "read"]) -> object:
        return await self.fake.deliver_status(message_id, status)

    def register_phone(self, phone: str) -> str:
        return self._user(phone.lstrip("+")).chat


class TestConformance(MessengerConformance):
    plugin = "amoconnect_whatsapp.plugin"
    chat = "4915100001001"
    phone = "+4915100001122"
    unknown_phone = "+4915100009999"

    drivers: ClassVar[list[WhatsAppDriver]] = []

    def make_fake(self, http: httpx.AsyncClient) -> Any:
        driver = WhatsAppDriver(http)
        self.drivers.append(driver)
        return driver

    @pytest.fixture(autouse=True)
    def _peer(self) -> Iterator[None]:
        """Every webhook and request of the test through pywa and the schema, once the rig is down."""
        yield
        while self.drivers:
            peer_check(self.drivers.pop().fake)
