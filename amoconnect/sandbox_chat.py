"""The sandbox's conversation as both sides see it: the client's chat in the fake messenger and the
manager's chat in the fake amoCRM (amojo), read from the fakes themselves, for the sandbox's page.

The client writes through the messenger's fake (its webhook reaches the connector) and the
manager answers through the fake amojo (its webhook reaches the connector); what each side shows
is what its fake holds: the texts the connector delivered to the messenger, the messages the
connector created in amoCRM with the delivery statuses it reported for the manager's.

:meth:`SandboxChat.client_device` plays the client's phone: an answer that reaches the messenger
is reported delivered at once and read :data:`READ_AFTER` seconds later (the client opens the
chat), through the fake's ``sandbox_client_gets`` / ``sandbox_client_reads`` when it has them, as
the messenger would report them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

import anyio

from .amojo import wire
from .testing.fake_amojo import FakeAmojo, StoredMessage

__all__ = ["READ_AFTER", "ChatLine", "SandboxChat"]

READ_AFTER = 1.5
"""Seconds between an answer reaching the client's messenger and the client reading it."""

Status = Literal["", "received", "sent", "refused", "delivered", "read", "failed"]


@dataclass
class ChatLine:
    """One message on one side: who wrote it, its text, and (in amoCRM) its status there."""

    who: Literal["client", "manager"]
    text: str
    status: Status = ""
    error: str = ""


class SandboxChat:
    """The conversation of the sandbox's one client (``chat``) between the two fakes."""

    def __init__(self, messenger: Any, amojo: FakeAmojo, *, chat: str = "client") -> None:
        self.messenger = messenger
        self.amojo = amojo
        self.chat = chat
        self._client_view: list[ChatLine] = []
        self._received = 0
        self._hook_status: dict[str, int | None] = {}
        """amoCRM's id of each manager's message → the connector's answer to its webhook."""

    # -- the two people ------------------------------------------------------------------
    async def client_writes(self, text: str) -> None:
        """The client writes ``text`` in the messenger."""
        self._catch_up()
        self._client_view.append(ChatLine("client", text))
        await self.messenger.sandbox_client_writes(self.chat, text)

    async def manager_answers(self, text: str) -> str:
        """A manager answers ``text`` in amoCRM's chat with the client; amoCRM's id of the message.

        :class:`LookupError` while the client has not written (amoCRM has no chat with them yet)."""
        last = self._last_from_client()
        if last is None:
            raise LookupError("the client has not written yet: amoCRM has no chat with them")
        emitted = await self.amojo.emit_text(last.scope_id, last.chat_id, text)
        message_id = emitted.message_id or ""
        self._hook_status[message_id] = emitted.status
        return message_id

    def amocrm_chat(self) -> str | None:
        """amoCRM's id of the chat with the client: the chat of the client's latest message there
        (in the account whose source the client last wrote to: the page may install another)."""
        last = self._last_from_client()
        return last.chat_id if last is not None else None

    def _last_from_client(self) -> StoredMessage | None:
        for message in reversed(self.amojo.messages):
            if message.from_client:
                return message
        return None

    # -- what each side shows --------------------------------------------------------------
    def _catch_up(self) -> None:
        received = self.messenger.sandbox_received(self.chat)
        for text in received[self._received :]:
            self._client_view.append(ChatLine("manager", text))
        self._received = len(received)

    def messenger_side(self) -> list[ChatLine]:
        """The client's chat in the messenger: what the client wrote and what reached them, in order."""
        self._catch_up()
        return list(self._client_view)

    def amocrm_side(self) -> list[ChatLine]:
        """amoCRM's chat with the client: the client's messages the connector created there and the
        manager's answers with the delivery status the connector reported for each."""
        chat_id = self.amocrm_chat()
        if chat_id is None:
            return []
        return [self._line(m) for m in self.amojo.messages if m.chat_id == chat_id]

    def _line(self, message: StoredMessage) -> ChatLine:
        text = message.text or f"[{message.type}]"
        if not message.from_manager:
            return ChatLine("client", text, "received")
        if message.statuses:
            last = message.statuses[-1]
            code = last.delivery_status
            if code == wire.DeliveryStatusCode.READ:
                return ChatLine("manager", text, "read")
            if code == wire.DeliveryStatusCode.DELIVERED:
                return ChatLine("manager", text, "delivered")
            if code == wire.DeliveryStatusCode.ERROR:
                return ChatLine("manager", text, "failed", (last.error or "")[:300])
        hook = self._hook_status.get(message.id)
        if hook is not None and hook != 200:
            return ChatLine("manager", text, "refused", f"the connector answered amoCRM's webhook {hook}")
        return ChatLine("manager", text, "sent")

    # -- the client's phone ----------------------------------------------------------------
    async def client_device(self, *, poll: float = 0.2, read_after: float = READ_AFTER) -> None:
        """Report each answer that reaches the client delivered, then read ``read_after`` seconds
        later, as the messenger does (only with a fake that reports receipts); runs until cancelled."""
        gets = getattr(self.messenger, "sandbox_client_gets", None)
        reads = getattr(self.messenger, "sandbox_client_reads", None)
        if gets is None and reads is None:
            return
        seen, due = 0, 0.0
        while True:
            await anyio.sleep(poll)
            count = len(self.messenger.sandbox_received(self.chat))
            if count > seen:
                seen = count
                if gets is not None:
                    await gets(self.chat)
                due = time.monotonic() + read_after
            if due and time.monotonic() >= due:
                due = 0.0
                if reads is not None:
                    await reads(self.chat)
