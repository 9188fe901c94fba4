{% set c = cookiecutter %}
{% set P = c.__class_prefix %}
{% set receipts = c.with_delivery_receipts or c.with_read_receipts %}
{% set presses = c.with_buttons or c.with_list_messages %}
"""The messenger adapter: {{ c.messenger_name }}'s API ↔ amoconnect's neutral model.

Read it top to bottom:

1. **Declare**: the settings class is one instance's configuration; the adapter's class
   attributes say what the messenger can do, and amoconnect holds the code to them.
2. **Receive**: ``verify_headers`` refuses a request without a signature before its body is
   read; ``verify`` checks the signature in constant time; ``parse`` decodes it
   strictly and turns it into neutral events, with the messenger's event id as the dedup key.
3. **Send**: every API call goes through ``_call``, the one place that maps the API's errors to
   :class:`~amoconnect.MessengerError` reasons amoconnect understands.

The wire format is the example API that the fake (``fake.py``) serves: a stand-in until the
plugin speaks the messenger's real API. Change the fake and the adapter together to what the
real API does, keeping the tests green. ``PLACEHOLDER`` marks where real APIs differ most.
"""

from __future__ import annotations

import hashlib
import hmac
{% if receipts %}
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal
{% else %}
from collections.abc import Sequence
from typing import Any
{% endif %}

import httpx
import msgspec
from amoconnect import (
{% if c.with_media %}
    Attachment,
{% endif %}
    Capability,
{% if c.with_media %}
    FetchedMedia,
{% endif %}
{% if c.with_comments %}
    InboundComment,
{% endif %}
{% if c.with_echoes %}
    InboundEcho,
{% endif %}
{% if c.with_edits %}
    InboundEdit,
{% endif %}
    InboundEvent,
    InboundMessage,
{% if c.with_reactions %}
    InboundReaction,
{% endif %}
{% if receipts %}
    InboundStatus,
{% endif %}
{% if c.with_typing %}
    InboundTyping,
{% endif %}
    MessengerAdapter,
    MessengerError,
{% if c.with_comments %}
    OutgoingCommentReply,
{% endif %}
    OutgoingMessage,
{% if c.with_reactions %}
    OutgoingReaction,
{% endif %}
{% if c.with_typing %}
    OutgoingTyping,
{% endif %}
    Person,
{% if c.with_comments %}
    Post,
{% endif %}
    RateLimit,
    RateLimited,
{% if c.with_reactions %}
    ReactionSet,
{% endif %}
    SendResult,
    SignatureError,
    WebhookError,
    WebhookRequest,
    WebhookResponse,
)
{% if c.with_media and receipts %}
from amoconnect.model import FailureReason, MediaKind
{% elif c.with_media %}
from amoconnect.model import MediaKind
{% elif receipts %}
from amoconnect.model import FailureReason
{% endif %}

from .fake import {{ P }}Fake

__all__ = [
    "NAME",
    "SIGNATURE_HEADER",
    "{{ P }}Adapter",
    "{{ P }}Settings",
    "signature_of",
]

NAME = {{ c.messenger_name | tojson }}
"""The messenger's name as people write it (in error messages)."""
# PLACEHOLDER: the header the real API signs webhooks in
SIGNATURE_HEADER = "X-{{ P }}-Signature"
{% if c.with_reactions %}
# PLACEHOLDER: the emoji the real messenger offers
REACTIONS = ("👍", "❤️", "😂", "😮", "😢", "🙏")
{% endif %}


def signature_of(body: bytes, secret: str) -> str:
    """The signature of a webhook ``body``: ``sha256=<hex HMAC-SHA256 keyed with the secret>``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class {{ P }}Settings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One {{ c.messenger_name }} account connected to amoCRM: a ``[[sources]]`` entry's ``settings``."""

    token: str
    """The API token (a secret: amoconnect redacts it from logs)."""
    secret: str
    """The key webhooks are signed with, registered with the messenger at startup."""
    # PLACEHOLDER: the real API's root
    api_url: str = "https://api.{{ c.messenger_slug | replace('_', '-') }}.example"
    """Root of the API, without a trailing slash."""


# -- the wire: webhook events, decoded strictly -------------------------------------------------


class _Wire(msgspec.Struct, frozen=True):
    """Base of the wire Structs; unknown fields are ignored, so that API additions break nothing."""


class _User(_Wire, frozen=True):
    id: str
    name: str = ""
    phone: str | None = None


class _Envelope(_Wire, frozen=True):
    event_id: str
    type: str


{% if c.with_media %}
class _Media(_Wire, frozen=True):
    kind: MediaKind
    file_id: str
    file_name: str = ""
    mime_type: str | None = None
    size: int | None = None


{% endif %}
class _Message(_Wire, frozen=True):
    chat_id: str
    user: _User
    message_id: str
    timestamp: float
    text: str = ""
{% if c.with_media %}
    media: _Media | None = None
{% endif %}
{% if c.with_replies %}
    reply_to: str | None = None
{% endif %}


{% if c.with_edits %}
class _Edit(_Wire, frozen=True):
    chat_id: str
    user: _User
    message_id: str
    timestamp: float
    text: str = ""


{% endif %}
{% if presses %}
class _Press(_Wire, frozen=True):
    chat_id: str
    user: _User
    press_id: str
    data: str
    timestamp: float
    label: str = ""


{% endif %}
{% if c.with_reactions %}
class _Reaction(_Wire, frozen=True):
    chat_id: str
    user: _User
    message_id: str
    timestamp: float
    emoji: str = ""


{% endif %}
{% if c.with_typing %}
class _Typing(_Wire, frozen=True):
    chat_id: str
    user: _User
    timestamp: float


{% endif %}
class _Error(_Wire, frozen=True):
    code: int
    message: str = ""
    retry_after: float | None = None


{% if receipts %}
class _Status(_Wire, frozen=True):
    chat_id: str
    message_id: str
    status: Literal["delivered", "read", "failed"]
    timestamp: float
    error: _Error | None = None


{% endif %}
{% if c.with_comments %}
class _Post(_Wire, frozen=True):
    id: str
    url: str
    text: str = ""


class _Comment(_Wire, frozen=True):
    chat_id: str
    user: _User
    post: _Post
    comment_id: str
    timestamp: float
    text: str = ""
    parent_id: str | None = None


{% endif %}
{% if c.with_echoes %}
class _Echo(_Wire, frozen=True):
    """What the business wrote to the client in the messenger's own app."""

    chat_id: str
    user: _User
    message_id: str
    timestamp: float
    text: str = ""
    reply_to: str | None = None
    author: _User | None = None


{% endif %}
class _Reply(_Wire, frozen=True):
    result: Any = None
    error: _Error | None = None


class _Sent(_Wire, frozen=True):
    message_id: str
    chat_id: str


_DECODERS: dict[str, msgspec.json.Decoder[Any]] = {
    "message": msgspec.json.Decoder(_Message),
{% if c.with_edits %}
    "edit": msgspec.json.Decoder(_Edit),
{% endif %}
{% if presses %}
    "press": msgspec.json.Decoder(_Press),
{% endif %}
{% if c.with_reactions %}
    "reaction": msgspec.json.Decoder(_Reaction),
{% endif %}
{% if c.with_typing %}
    "typing": msgspec.json.Decoder(_Typing),
{% endif %}
{% if receipts %}
    "status": msgspec.json.Decoder(_Status),
{% endif %}
{% if c.with_comments %}
    "comment": msgspec.json.Decoder(_Comment),
{% endif %}
{% if c.with_echoes %}
    "echo": msgspec.json.Decoder(_Echo),
{% endif %}
}
"""Decoders of the event kinds this adapter handles, by the event's ``type``."""


def _person(user: _User) -> Person:
    return Person(id=user.id, name=user.name, phone=user.phone)


def _event(key: str, event: Any) -> InboundEvent:
    """The neutral event of one decoded webhook event; ``key`` (the messenger's event id) dedups it."""
{% if c.with_edits %}
    if isinstance(event, _Edit):
        return InboundEdit(
            chat=event.chat_id,
            timestamp=event.timestamp,
            dedup_key=key,
            sender=_person(event.user),
            message_id=event.message_id,
            text=event.text,
        )
{% endif %}
{% if presses %}
    if isinstance(event, _Press):
        return InboundMessage(
            chat=event.chat_id,
            timestamp=event.timestamp,
            dedup_key=key,
            sender=_person(event.user),
            message_id=event.press_id,
            text=event.label,
            callback_data=event.data,  # with keyed sends: resolved by context.button_data.resolved(events)
        )
{% endif %}
{% if c.with_reactions %}
    if isinstance(event, _Reaction):
        return InboundReaction(
            chat=event.chat_id,
            timestamp=event.timestamp,
            dedup_key=key,
            sender=_person(event.user),
            message_id=event.message_id,
            emoji=event.emoji,
            removed=not event.emoji,
        )
{% endif %}
{% if c.with_typing %}
    if isinstance(event, _Typing):
        return InboundTyping(chat=event.chat_id, timestamp=event.timestamp, dedup_key=key, sender=_person(event.user))
{% endif %}
{% if receipts %}
    if isinstance(event, _Status):
        error = event.error
        return InboundStatus(
            chat=event.chat_id,
            timestamp=event.timestamp,
            dedup_key=key,
            message_id=event.message_id,
            status=event.status,
            error_code=str(error.code) if error is not None else None,
            error=error.message if error is not None else "",
        )
{% endif %}
{% if c.with_comments %}
    if isinstance(event, _Comment):
        return InboundComment(
            chat=event.chat_id,
            timestamp=event.timestamp,
            dedup_key=key,
            sender=_person(event.user),
            post=Post(id=event.post.id, url=event.post.url, caption=event.post.text or None),
            comment_id=event.comment_id,
            parent_id=event.parent_id,
            text=event.text,
        )
{% endif %}
{% if c.with_echoes %}
    if isinstance(event, _Echo):
        # PLACEHOLDER: if the real API reports your own sends too, mark them (``ours=True``) by the
        # idempotency key you sent, or leave it to amoconnect, which drops an echo of a message id it sent.
        return InboundEcho(
            chat=event.chat_id,
            timestamp=event.timestamp,
            dedup_key=key,
            client=_person(event.user),
            message_id=event.message_id,
            text=event.text,
            reply_to=event.reply_to,
            author=_person(event.author) if event.author is not None else None,
        )
{% endif %}
    assert isinstance(event, _Message)
{% if c.with_media %}
    media = event.media
    attachments: tuple[Attachment, ...] = ()
    if media is not None:
        attachments = (
            Attachment(
                kind=media.kind,
                fetch=media.file_id,
                file_name=media.file_name,
                size=media.size,
                mime_type=media.mime_type,
            ),
        )
{% endif %}
    return InboundMessage(
        chat=event.chat_id,
        timestamp=event.timestamp,
        dedup_key=key,
        sender=_person(event.user),
        message_id=event.message_id,
        text=event.text,
{% if c.with_media %}
        attachments=attachments,
{% endif %}
{% if c.with_replies %}
        reply_to=event.reply_to,
{% endif %}
    )


class {{ P }}Adapter(MessengerAdapter):
    """{{ c.messenger_name }}: one instance per connected account."""

    name = "{{ c.messenger_slug }}"
    settings = {{ P }}Settings
{% set caps = [] %}
{% for capability in ["media", "buttons", "replies", "edits", "reactions", "typing", "delivery_receipts", "read_receipts", "list_messages", "templates", "time_window", "write_first", "comments", "echoes"] %}
{% if c["with_" + capability] %}{% set _ = caps.append(capability) %}{% endif %}
{% endfor %}
{% if caps %}
    capabilities = frozenset(
        {
{% for capability in caps %}
            Capability.{{ capability }},
{% endfor %}
        }
    )
{% else %}
    capabilities = frozenset[Capability]()  # text both ways; add capabilities as the adapter learns them
{% endif %}
{% if c.with_reactions %}
    reactions = ReactionSet.of(*REACTIONS)
{% endif %}
{% if c.with_time_window %}
    # PLACEHOLDER: how long after the client's last message free text may go
    reply_window = 24 * 3600.0
{% endif %}
    # PLACEHOLDER: the real API's send limits
    rate_limits = (RateLimit(count=30, per=1.0),)
{% if receipts %}
    # PLACEHOLDER: the real API's error codes of failed messages, and what they mean
    error_reasons: ClassVar[Mapping[str, FailureReason]] = {"403": "blocked", "404": "no_chat"}
{% endif %}
    sandbox_factory = {{ P }}Fake

    config: {{ P }}Settings

    # -- webhooks ---------------------------------------------------------------------------

    async def verify_headers(self, request: WebhookRequest) -> None:
        """Refuse a request without the signature header before its body is read (it costs no memory)."""
        if not request.headers.get(SIGNATURE_HEADER):
            raise SignatureError(f"{SIGNATURE_HEADER} header is missing")

    async def verify(self, request: WebhookRequest) -> WebhookResponse | None:
        """Check the signature header against the HMAC-SHA256 of the raw body, in constant time."""
        given = request.headers.get(SIGNATURE_HEADER)
        if not given:
            raise SignatureError(f"{SIGNATURE_HEADER} header is missing")
        if not hmac.compare_digest(given.encode(), signature_of(request.body, self.config.secret).encode()):
            raise SignatureError(f"{SIGNATURE_HEADER} does not match the body: check the instance's secret")
        return None

    async def parse(self, request: WebhookRequest) -> Sequence[InboundEvent]:
        """The neutral event of one webhook; none for an event kind this adapter does not handle."""
        try:
            envelope = msgspec.json.decode(request.body, type=_Envelope)
            decoder = _DECODERS.get(envelope.type)
            if decoder is None:
                return []
            return [_event(envelope.event_id, decoder.decode(request.body))]
        except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
            raise WebhookError(f"{NAME} webhook is malformed: {exc}") from exc

    # -- the API ----------------------------------------------------------------------------

    async def _call(self, method: str, params: dict[str, Any]) -> Any:
        """Call API ``method``; its result, or its error mapped to a ``MessengerError``."""
        url = f"{self.config.api_url}/v1/{method}"
        headers = {"Authorization": f"Bearer {self.config.token}"}
        try:
            response = await self.context.http.post(url, json=params, headers=headers)
        except httpx.TransportError as exc:
            raise MessengerError(f"{NAME} {method}: {type(exc).__name__}", retryable=True) from exc
        try:
            reply = msgspec.json.decode(response.content, type=_Reply)
        except msgspec.DecodeError:
            status = response.status_code
            raise MessengerError(f"{NAME} {method}: HTTP {status}", code=status, retryable=status >= 500) from None
        if response.is_success and reply.error is None:
            return reply.result
        raise _error(method, response.status_code, reply.error)

    # -- sends ------------------------------------------------------------------------------

    async def send_message(self, message: OutgoingMessage) -> SendResult:
        """Send text{% if c.with_media %}, media (the text as the first caption){% endif %}{% if c.with_buttons %}, buttons{% endif %}{% if c.with_list_messages %}, a list{% endif %}{% if c.with_templates %}, a template{% endif %}."""
{% if c.with_write_first %}
        target: dict[str, Any] = {"chat_id": message.chat} if message.chat is not None else {"phone": message.phone}
{% else %}
        target: dict[str, Any] = {"chat_id": message.chat}
{% endif %}
        extras: dict[str, Any] = {}
{% if c.with_replies %}
        if message.reply_to is not None:
            extras["reply_to"] = message.reply_to
{% endif %}
{% if c.with_buttons %}
        # A messenger that holds less button data than amoCRM sends: first
        # message = await self.context.button_data.keyed(message, fits), never cut (docs/plugins.md).
        if message.buttons:
            extras["buttons"] = [
                [{"text": b.text, "url": b.url} if b.url else {"text": b.text, "data": b.callback_data} for b in row]
                for row in message.buttons
            ]
{% endif %}
{% if c.with_list_messages %}
        if message.list_message is not None:
            extras["list"] = msgspec.to_builtins(message.list_message)
{% endif %}
{% if c.with_templates %}
        if message.template is not None:
            template = message.template
            extras["template"] = {
                "name": template.external_id or template.id,
                "params": [param.value for param in template.params],
            }
{% endif %}
        parts = [{"text": message.text, **extras}]
{% if c.with_media %}
        if message.attachments:
            parts = [
                {
                    "text": message.text if index == 0 else "",
                    "media": {"kind": a.kind, "url": a.url, "file_name": a.file_name},
                    **(extras if index == 0 else {}),
                }
                for index, a in enumerate(message.attachments)
            ]
{% endif %}
        ids: list[str] = []
        chat: str | None = None
        for part in parts:
            sent = msgspec.convert(await self._call("messages/send", {**target, **part}), _Sent)
            ids.append(sent.message_id)
            chat = sent.chat_id
            target = {"chat_id": chat}
{% if c.with_write_first %}
        return SendResult(message_ids=tuple(ids), chat=chat if message.chat is None else None)
{% else %}
        return SendResult(message_ids=tuple(ids))
{% endif %}
{% if c.with_reactions %}

    async def send_reaction(self, reaction: OutgoingReaction) -> None:
        """Set (or, with an empty emoji, remove) our reaction, in the messenger's own spelling of the emoji."""
        emoji = "" if reaction.removed else (self.reactions.match(reaction.emoji) or reaction.emoji)
        await self._call("reactions/set", {"chat_id": reaction.chat, "message_id": reaction.message_id, "emoji": emoji})
{% endif %}
{% if c.with_typing %}

    async def send_typing(self, typing: OutgoingTyping) -> None:
        """Show the manager typing (the messenger shows it a few seconds); comment threads show none."""
        if typing.post_id is None:
            await self._call("typing/start", {"chat_id": typing.chat})
{% endif %}
{% if c.with_comments %}

    async def send_comment_reply(self, reply: OutgoingCommentReply) -> SendResult:
        """Answer a comment in public."""
        params = {"post_id": reply.post_id, "comment_id": reply.comment_id, "text": reply.text}
        result = await self._call("comments/reply", params)
        return SendResult(message_ids=(str(result["comment_id"]),))
{% endif %}
{% if c.with_media %}

    async def fetch_media(self, handle: str) -> FetchedMedia:
        """Download a client's file by the id its webhook gave (the download needs the token)."""
        url = f"{self.config.api_url}/v1/files/{handle}"
        try:
            response = await self.context.http.get(url, headers={"Authorization": f"Bearer {self.config.token}"})
        except httpx.TransportError as exc:
            raise MessengerError(f"{NAME} file download: {type(exc).__name__}", retryable=True) from exc
        if response.status_code != 200:
            status = response.status_code
            raise MessengerError(f"{NAME} file download: HTTP {status}", code=status, retryable=status >= 500)
        return FetchedMedia(content=response.content, content_type=response.headers.get("content-type"))
{% endif %}

    # -- lifecycle --------------------------------------------------------------------------

    async def startup(self) -> None:
        """Register the webhook (``context.public_url``) and its secret with the messenger; the
        console shows the outcome beside the source (``context.intake``)."""
        if not self.context.public_url:
            self.context.log.warning("no public URL, so the webhook is not registered: set server.public_url")
            self.context.intake("not_registered")
            return
        await self._call("webhook/set", {"url": self.context.public_url, "secret": self.config.secret})
        self.context.intake("webhook")


def _error(method: str, status: int, error: _Error | None) -> MessengerError:
    """The ``MessengerError`` of a refused call: retry what may pass later, name the reason of the rest."""
    description = f"{NAME} {method}: {error.message if error is not None else f'HTTP {status}'}"
    if status == 429:
        retry_after = error.retry_after if error is not None and error.retry_after is not None else 1.0
        return RateLimited(description, retry_after=retry_after, code=status)
    if status >= 500:
        return MessengerError(description, code=status, retryable=True)
    if status == 401:
        return MessengerError(f"{description}: check the instance's token", code=status)
    if status == 403:
        return MessengerError(description, code=status, reason="blocked")
    if status == 404:
        return MessengerError(description, code=status, reason="no_chat")
    return MessengerError(description, code=status)
