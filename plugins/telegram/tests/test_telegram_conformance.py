"""The core's conformance suite, run against this plugin through a driver for FakeTelegram."""

from __future__ import annotations

from typing import Any, Literal

import httpx
from amoconnect.model import Button, ListMessage, ListRow, ListSection
from amoconnect.testing.conformance import MessengerConformance
from amoconnect.testing.fakes import ClientMedia, ReceivedMessage, ReceivedReaction

from amoconnect_telegram.fake import FakeTelegram, SentMessage

_TELEGRAM_KINDS = {
    "picture": "photo",
    "file": "document",
    "video": "video",
    "voice": "voice",
    "audio": "audio",
    "sticker": "sticker",
}
_NEUTRAL_KINDS = {"text": "text", **{telegram: neutral for neutral, telegram in _TELEGRAM_KINDS.items()}}


class TelegramDriver:
    """FakeTelegram as the suite drives it: chat ids as strings, neutral media kinds.

    A Telegram client sees a list message as buttons, one per row, so :meth:`received` reports
    the callback buttons of a message as its list too. Telegram sends bots no receipts: a send it
    accepted is reported delivered at once, so :meth:`deliver_status` has nothing to do.
    """

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.fake = FakeTelegram(http=http)
        self.app = self.fake
        self._chats: set[int] = set()

    def _chat(self, chat: str) -> int:
        number = int(chat)
        if number not in self._chats:
            self.fake.add_client(f"Client {chat}", chat=number)
            self._chats.add(number)
        return number

    def sandbox_settings(self, api_url: str) -> dict[str, Any]:
        return self.fake.sandbox_settings(api_url)

    async def sandbox_client_writes(self, chat: str, text: str) -> None:
        await self.client_writes(chat, text)

    def sandbox_received(self, chat: str) -> list[str]:
        return [message.text for message in self.received(chat)]

    async def client_writes(
        self, chat: str, text: str = "", *, media: ClientMedia | None = None, reply_to: str | None = None
    ) -> object:
        number = self._chat(chat)
        if media is not None:
            kind = _TELEGRAM_KINDS[media.kind]
            return await self.fake.client_sends(
                number, kind, media.content, caption=text, file_name=media.file_name, mime_type=media.mime_type
            )
        return await self.fake.client_writes(number, text, reply_to=int(reply_to) if reply_to else None)

    @staticmethod
    def _received(message: SentMessage) -> ReceivedMessage:
        buttons = tuple(
            tuple(Button(text=b["text"], url=b.get("url"), callback_data=b.get("callback_data")) for b in row)
            for row in message.buttons
        )
        rows = tuple(
            ListRow(callback_data=b.callback_data, title=b.text) for r in buttons for b in r if b.callback_data
        )
        menu = ListMessage(body=message.text, button="", sections=(ListSection(title="", rows=rows),)) if rows else None
        return ReceivedMessage(
            message_id=str(message.message_id),
            text=message.text,
            kind=_NEUTRAL_KINDS[message.kind],
            media_url=message.media,
            file_name=message.file_name,
            buttons=buttons,
            list_message=menu,
            reply_to=str(message.reply_to) if message.reply_to is not None else None,
        )

    def received(self, chat: str) -> list[ReceivedMessage]:
        return [self._received(message) for message in self.fake.sent_to(int(chat))]

    async def client_edits(self, chat: str, message_id: str, text: str) -> object:
        return await self.fake.client_edits(self._chat(chat), int(message_id), text)

    async def client_presses(self, chat: str, callback_data: str) -> object:
        number = self._chat(chat)
        for message in reversed(self.fake.sent_to(number)):
            if any(b.get("callback_data") == callback_data for row in message.buttons for b in row):
                return await self.fake.client_presses(number, message.message_id, callback_data)
        raise LookupError(f"the bot sent chat {chat} no button with callback_data {callback_data!r}")

    async def client_reacts(self, chat: str, message_id: str, emoji: str, removed: bool = False) -> object:
        return await self.fake.client_reacts(self._chat(chat), int(message_id), *(() if removed else (emoji,)))

    def received_reactions(self, chat: str) -> list[ReceivedReaction]:
        return [
            ReceivedReaction(str(r.message_id), r.emoji[0] if r.emoji else "")
            for r in self.fake.reactions
            if r.chat == int(chat)
        ]

    def received_typing(self, chat: str) -> int:
        return sum(1 for action in self.fake.chat_actions if action.chat == int(chat))

    async def deliver_status(self, chat: str, message_id: str, status: Literal["delivered", "read"]) -> object:
        return None


class TestConformance(MessengerConformance):
    plugin = "amoconnect_telegram.plugin"

    def make_fake(self, http: httpx.AsyncClient) -> Any:
        return TelegramDriver(http)
