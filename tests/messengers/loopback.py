"""The core's test messenger: its webhook body is a JSON list of neutral inbound events.

Sends are recorded on the adapter instance (``adapter.sent``); a test scripts failures by
appending exceptions to ``adapter.failures``. Loadable with ``--plugin-dir tests/messengers``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Sequence
from typing import Any

import msgspec

from amoconnect import (
    Capability,
    ConfigError,
    FetchedMedia,
    InboundEvent,
    MessengerAdapter,
    OutgoingCommentReply,
    OutgoingMessage,
    OutgoingReaction,
    OutgoingTyping,
    RateLimit,
    ReactionSet,
    SendResult,
    SignatureError,
    WebhookError,
    WebhookRequest,
    hookimpl,
)
from amoconnect.signing import same_secret

SIGNATURE_HEADER = "X-Loopback-Signature"

_events = msgspec.json.Decoder(list[InboundEvent])


class LoopbackSettings(msgspec.Struct, forbid_unknown_fields=True):
    secret: str = "loopback-secret"
    """Key of the webhook signature (HMAC-SHA256 hex of the body)."""
    files: dict[str, str] = {}
    """fetch handle → file content, for media the core must re-host."""
    refused: str = ""
    """When set, startup fails as a messenger refusing the token does, with this reason."""


def sign(body: bytes, secret: str = "loopback-secret") -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class LoopbackAdapter(MessengerAdapter):
    name = "loopback"
    settings = LoopbackSettings
    capabilities = frozenset(
        {
            Capability.write_first,
            Capability.typing,
            Capability.reactions,
            Capability.comments,
            Capability.buttons,
            Capability.list_messages,
            Capability.templates,
            Capability.media,
            Capability.edits,
            Capability.replies,
            Capability.delivery_receipts,
            Capability.read_receipts,
        }
    )
    reactions = ReactionSet.of("👍", "❤", "😂")
    rate_limits = (RateLimit(count=1000, per=1.0),)

    def __init__(self, config: msgspec.Struct, context: Any) -> None:
        super().__init__(config, context)
        self.sent: list[Any] = []
        self.failures: list[Exception] = []
        self.started = False
        self.unregistered = False

    @property
    def secret(self) -> str:
        assert isinstance(self.config, LoopbackSettings)
        return self.config.secret

    async def startup(self) -> None:
        assert isinstance(self.config, LoopbackSettings)
        if self.config.refused:
            raise ConfigError(
                f"loopback instance {self.context.instance!r}: the messenger refuses the token "
                f"{self.config.secret}: {self.config.refused}"
            )
        self.started = True

    async def unregister(self) -> None:
        self.unregistered = True  # its webhook would be gone

    async def verify_headers(self, request: WebhookRequest) -> None:
        if not re.fullmatch(r"[0-9a-f]{64}", request.headers.get(SIGNATURE_HEADER, "")):
            raise SignatureError("X-Loopback-Signature missing or not a hex HMAC-SHA256")

    async def verify(self, request: WebhookRequest) -> None:
        given = request.headers.get(SIGNATURE_HEADER, "")
        if not same_secret(given, sign(request.body, self.secret)):
            raise SignatureError("X-Loopback-Signature does not match the body")

    async def parse(self, request: WebhookRequest) -> Sequence[InboundEvent]:
        try:
            return _events.decode(request.body)
        except msgspec.DecodeError as exc:
            raise WebhookError(f"loopback webhook body: {exc}") from exc

    def _next(self, item: Any) -> None:
        if self.failures:
            raise self.failures.pop(0)
        self.sent.append(item)

    async def send_message(self, message: OutgoingMessage) -> SendResult:
        self._next(message)
        chat = message.chat or f"phone:{message.phone}"
        return SendResult(message_ids=(f"out{len(self.sent)}",), chat=chat if message.phone else None)

    async def send_reaction(self, reaction: OutgoingReaction) -> None:
        self._next(reaction)

    async def send_typing(self, typing: OutgoingTyping) -> None:
        self._next(typing)

    async def send_comment_reply(self, reply: OutgoingCommentReply) -> SendResult:
        self._next(reply)
        return SendResult(message_ids=(f"comment-reply-{len(self.sent)}",))

    async def fetch_media(self, handle: str) -> FetchedMedia:
        assert isinstance(self.config, LoopbackSettings)
        return FetchedMedia(content=self.config.files[handle].encode(), content_type="image/png", file_name="p.png")


class WindowedAdapter(LoopbackAdapter):
    """Like WhatsApp: free text only within 24 hours of the client's last message; templates outside."""

    name = "windowed"
    capabilities = LoopbackAdapter.capabilities | {Capability.time_window}
    reply_window = 24 * 3600.0


class PlainAdapter(LoopbackAdapter):
    """A messenger with text only: no buttons, lists, templates, reactions, typing, replies or write-first."""

    name = "plain"
    capabilities = frozenset({Capability.media, Capability.delivery_receipts})
    reactions = ReactionSet()


@hookimpl
def register_messengers(register: Any) -> None:
    register(LoopbackAdapter)
    register(WindowedAdapter)
    register(PlainAdapter)
