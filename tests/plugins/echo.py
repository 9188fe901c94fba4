"""A tiny messenger plugin for tests: webhooks carry ``{"chat", "user", "id", "text"}`` as JSON."""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from amoconnect.adapter import AdapterContext, MessengerAdapter, Route, WebhookRequest, WebhookResponse
from amoconnect.capabilities import Capability, RateLimit, ReactionSet
from amoconnect.errors import SignatureError
from amoconnect.hookspecs import RegisterMessenger, hookimpl
from amoconnect.model import (
    InboundEvent,
    InboundMessage,
    OutgoingMessage,
    OutgoingReaction,
    OutgoingTyping,
    Person,
    SendResult,
)


class EchoSettings(msgspec.Struct, frozen=True):
    secret: str


class _Update(msgspec.Struct):
    chat: str
    user: str
    id: str
    text: str


class EchoAdapter(MessengerAdapter):
    name = "echo"
    settings = EchoSettings
    capabilities = frozenset({Capability.typing, Capability.reactions, Capability.time_window})
    reactions = ReactionSet.of("👍", "❤")
    reply_window = 86400.0
    rate_limits = (RateLimit(count=1, per=1.0, scope="chat"),)
    routes = (Route(methods=("GET", "POST")),)

    config: EchoSettings

    def __init__(self, config: EchoSettings, context: AdapterContext) -> None:
        super().__init__(config, context)
        self.sent: list[object] = []

    async def verify(self, request: WebhookRequest) -> WebhookResponse | None:
        if request.method == "GET":
            return WebhookResponse(body=request.query.get("challenge", "").encode())
        if request.headers.get("x-echo-secret") != self.config.secret:
            raise SignatureError("wrong X-Echo-Secret")
        return None

    async def parse(self, request: WebhookRequest) -> Sequence[InboundEvent]:
        update = msgspec.json.decode(request.body, type=_Update)
        return [
            InboundMessage(
                chat=update.chat,
                timestamp=0.0,
                dedup_key=update.id,
                sender=Person(id=update.user),
                message_id=update.id,
                text=update.text,
            )
        ]

    async def send_message(self, message: OutgoingMessage) -> SendResult:
        self.sent.append(message)
        return SendResult(message_ids=(f"echo-{len(self.sent)}",))

    async def send_reaction(self, reaction: OutgoingReaction) -> None:
        self.sent.append(reaction)

    async def send_typing(self, typing: OutgoingTyping) -> None:
        self.sent.append(typing)


@hookimpl
def register_messengers(register: RegisterMessenger) -> None:
    register(EchoAdapter)
