"""benchchat: the messenger of the relay benchmark, loaded with ``--plugin-dir bench/plugins``.

Deliberately minimal, so that the numbers show the core and not an adapter: a webhook is one
JSON update ``{"update_id", "chat", "user", "message_id", "text", "ts"}`` signed with
``X-Benchchat-Signature: <hex HMAC-SHA256 of the body>``; a send is one ``POST
{api_url}/sendMessage``. The benchmark's load generator plays the messenger and, unlike a
real messenger, never retries a webhook (as amoCRM never does).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

import msgspec

from amoconnect.adapter import AdapterContext, MessengerAdapter, Route, WebhookRequest
from amoconnect.errors import MessengerError, SignatureError, WebhookError
from amoconnect.hookspecs import RegisterMessenger, hookimpl
from amoconnect.model import InboundEvent, InboundMessage, OutgoingMessage, Person, SendResult

SIGNATURE_HEADER = "x-benchchat-signature"


class BenchchatSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    secret: str
    """Key of the webhook signature."""
    api_url: str = ""
    """Base URL of the messenger's API (``sendMessage`` is posted there); empty: sends succeed at once."""


class Update(msgspec.Struct, frozen=True):
    update_id: int
    chat: str
    user: str
    message_id: str
    text: str
    ts: float


def signature(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


_decode = msgspec.json.Decoder(Update).decode


class BenchchatAdapter(MessengerAdapter):
    name = "benchchat"
    settings = BenchchatSettings
    routes = (Route(),)

    config: BenchchatSettings

    def __init__(self, config: BenchchatSettings, context: AdapterContext) -> None:
        super().__init__(config, context)
        self._key = config.secret.encode()

    async def verify(self, request: WebhookRequest) -> None:
        given = request.headers.get(SIGNATURE_HEADER, "")
        expected = hmac.new(self._key, request.body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, given):
            raise SignatureError("X-Benchchat-Signature does not match the body")
        return None

    async def parse(self, request: WebhookRequest) -> Sequence[InboundEvent]:
        try:
            update = _decode(request.body)
        except msgspec.DecodeError as exc:
            raise WebhookError(f"not a benchchat update: {exc}") from exc
        return (
            InboundMessage(
                chat=update.chat,
                timestamp=update.ts,
                dedup_key=str(update.update_id),
                sender=Person(id=update.user, name=f"Client {update.user}"),
                message_id=update.message_id,
                text=update.text,
            ),
        )

    async def send_message(self, message: OutgoingMessage) -> SendResult:
        if not self.config.api_url:
            return SendResult(message_ids=(f"sent-{message.dedup_key}",))
        response = await self.context.http.post(
            f"{self.config.api_url}/sendMessage",
            json={"chat": message.chat, "text": message.text, "dedup_key": message.dedup_key},
        )
        if response.status_code != 200:
            raise MessengerError(f"sendMessage answered {response.status_code}", retryable=True)
        return SendResult(message_ids=(str(response.json()["message_id"]),))


@hookimpl
def register_messengers(register: RegisterMessenger) -> None:
    register(BenchchatAdapter)
