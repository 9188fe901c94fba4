"""The fakechat plugin: a complete messenger adapter for :mod:`amoconnect.testing.fakechat_api`.

It is the messenger the core's end-to-end tests drive, what ``amoconnect run --plugin fake
--sandbox`` shows, and a worked example of a plugin. Read it top to bottom as one:

1. **Declare**: :class:`FakeChatSettings` is the instance's configuration (token, webhook
   secret, API root); :class:`FakeChatAdapter`'s class attributes say what fakechat can do.
2. **Receive**: :meth:`~FakeChatAdapter.verify` checks the HMAC signature in constant time;
   :meth:`~FakeChatAdapter.parse` decodes the update with typed msgspec Structs and turns it
   into neutral events, using the messenger's ``update_id`` as the dedup key. Media arrive as
   ``fetch`` handles because fakechat's file URLs carry the bot token; the core re-hosts them
   through :meth:`~FakeChatAdapter.fetch_media`. A press's ``callback_data`` goes through
   ``context.button_data.resolved``: long data a send put under a key comes back whole.
3. **Send**: button and row data over fakechat's 64 bytes goes under a short key
   (``context.button_data.keyed``) rather than being cut; every Bot API call goes through
   :meth:`~FakeChatAdapter._call`, the one place that maps the API's errors to
   :class:`~amoconnect.errors.MessengerError` reasons the core understands (``blocked``,
   ``no_chat``, :class:`~amoconnect.errors.RateLimited`, retryable).
4. **Register**: the module-level :func:`register_messengers` hook is what the entry point
   ``fake = "amoconnect.testing.fake_messenger"`` loads.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Literal

import httpx
import msgspec

from ..adapter import FetchedMedia, MessengerAdapter, WebhookRequest, WebhookResponse
from ..capabilities import Capability, RateLimit, ReactionSet
from ..errors import MessengerError, RateLimited, SignatureError, WebhookError
from ..hookspecs import RegisterMessenger, hookimpl
from ..model import (
    Attachment,
    Contact,
    FailureReason,
    InboundComment,
    InboundEcho,
    InboundEdit,
    InboundEvent,
    InboundMessage,
    InboundReaction,
    InboundStatus,
    InboundTyping,
    Location,
    MediaKind,
    OutgoingCommentReply,
    OutgoingMessage,
    OutgoingReaction,
    OutgoingTyping,
    Person,
    Post,
    SendResult,
)
from ..signing import same_secret
from .fakechat_api import MAX_CALLBACK_DATA, REACTIONS, SIGNATURE_HEADER, FakeChat, signature_of

__all__ = ["FakeChatAdapter", "FakeChatSettings", "register_messengers"]


class FakeChatSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One fakechat bot: its token, the secret its webhook updates are signed with, the API root."""

    token: str
    """The bot token (a secret: it is in every API URL)."""
    secret: str
    """The webhook secret, registered with ``setWebhook`` at startup."""
    api_url: str = "http://fakechat.test"
    """Root of the Bot API, without a trailing slash."""


# -- the wire: fakechat's updates, decoded strictly ---------------------------------------------


class _Wire(msgspec.Struct, frozen=True):
    """Base of the update Structs; unknown fields are ignored so that API additions do not break us."""


class _Chat(_Wire, frozen=True):
    id: str


class _From(_Wire, frozen=True):
    id: str
    name: str = ""
    username: str | None = None
    phone: str | None = None


class _Media(_Wire, frozen=True):
    kind: MediaKind
    file_id: str
    file_name: str = ""
    mime_type: str | None = None
    size: int | None = None


class _Location(_Wire, frozen=True):
    lat: float
    lon: float


class _Contact(_Wire, frozen=True):
    name: str
    phone: str


class _Message(_Wire, frozen=True):
    message_id: str
    chat: _Chat
    sender: _From = msgspec.field(name="from")
    date: int
    text: str = ""
    media: _Media | None = None
    location: _Location | None = None
    contact: _Contact | None = None
    reply_to: str | None = None
    edit_date: int | None = None


class _BusinessMessage(_Wire, frozen=True):
    message_id: str
    chat: _Chat
    sender: _From = msgspec.field(name="from")
    to: _From
    date: int
    text: str = ""
    reply_to: str | None = None


class _Callback(_Wire, frozen=True):
    id: str
    chat: _Chat
    sender: _From = msgspec.field(name="from")
    message_id: str
    callback_data: str
    text: str
    date: int


class _Reaction(_Wire, frozen=True):
    chat: _Chat
    sender: _From = msgspec.field(name="from")
    message_id: str
    date: int
    emoji: str = ""
    removed: bool = False


class _Typing(_Wire, frozen=True):
    chat: _Chat
    sender: _From = msgspec.field(name="from")
    date: int


class _Error(_Wire, frozen=True):
    code: int
    description: str = ""


class _Status(_Wire, frozen=True):
    chat: _Chat
    message_id: str
    status: Literal["delivered", "read", "failed"]
    date: int
    error: _Error | None = None


class _Post(_Wire, frozen=True):
    id: str
    url: str
    caption: str | None = None


class _Comment(_Wire, frozen=True):
    post: _Post
    comment_id: str
    chat: _Chat
    sender: _From = msgspec.field(name="from")
    date: int
    text: str = ""
    parent_id: str | None = None


class _Update(_Wire, frozen=True):
    update_id: int
    message: _Message | None = None
    edited_message: _Message | None = None
    callback: _Callback | None = None
    reaction: _Reaction | None = None
    typing: _Typing | None = None
    status: _Status | None = None
    comment: _Comment | None = None
    business_message: _BusinessMessage | None = None


class _Parameters(_Wire, frozen=True):
    retry_after: float | None = None


class _Reply(_Wire, frozen=True):
    ok: bool
    result: Any = None
    error_code: int | None = None
    description: str = ""
    parameters: _Parameters | None = None


class _FileInfo(_Wire, frozen=True):
    file_id: str
    file_path: str
    file_size: int | None = None


def _person(sender: _From) -> Person:
    return Person(id=sender.id, name=sender.name, username=sender.username, phone=sender.phone)


def _content(message: _Message) -> dict[str, Any]:
    """The fields a new message and an edit share."""
    media = message.media
    attachments: tuple[Attachment, ...] = ()
    if media is not None:
        attachment = Attachment(
            kind=media.kind, fetch=media.file_id, file_name=media.file_name, size=media.size, mime_type=media.mime_type
        )
        attachments = (attachment,)
    return {
        "chat": message.chat.id,
        "sender": _person(message.sender),
        "message_id": message.message_id,
        "text": message.text,
        "attachments": attachments,
        "location": Location(lat=message.location.lat, lon=message.location.lon) if message.location else None,
        "contact": Contact(name=message.contact.name, phone=message.contact.phone) if message.contact else None,
    }


def _fits_callback_data(value: str) -> bool:
    return 1 <= len(value.encode()) <= MAX_CALLBACK_DATA


def _failure_reason(code: int) -> FailureReason:
    return "blocked" if code == 403 else "other"


def _events(update: _Update) -> list[InboundEvent]:
    key = str(update.update_id)
    if update.message is not None:
        m = update.message
        return [InboundMessage(timestamp=float(m.date), dedup_key=key, reply_to=m.reply_to, **_content(m))]
    if update.edited_message is not None:
        m = update.edited_message
        return [InboundEdit(timestamp=float(m.edit_date or m.date), dedup_key=key, **_content(m))]
    if update.callback is not None:
        c = update.callback
        press = InboundMessage(
            chat=c.chat.id,
            timestamp=float(c.date),
            dedup_key=key,
            sender=_person(c.sender),
            message_id=c.id,
            text=c.text,
            callback_data=c.callback_data,
        )
        return [press]
    if update.reaction is not None:
        r = update.reaction
        return [
            InboundReaction(
                chat=r.chat.id,
                timestamp=float(r.date),
                dedup_key=key,
                sender=_person(r.sender),
                message_id=r.message_id,
                emoji=r.emoji,
                removed=r.removed,
            )
        ]
    if update.typing is not None:
        t = update.typing
        return [InboundTyping(chat=t.chat.id, timestamp=float(t.date), dedup_key=key, sender=_person(t.sender))]
    if update.status is not None:
        s = update.status
        failed = s.status == "failed"
        return [
            InboundStatus(
                chat=s.chat.id,
                timestamp=float(s.date),
                dedup_key=key,
                message_id=s.message_id,
                status=s.status,
                reason=_failure_reason(s.error.code if s.error else 0) if failed else None,
                error_code=str(s.error.code) if s.error else None,
                error=s.error.description if s.error else "",
            )
        ]
    if update.comment is not None:
        n = update.comment
        post = Post(id=n.post.id, url=n.post.url, caption=n.post.caption or None)
        return [
            InboundComment(
                chat=n.chat.id,
                timestamp=float(n.date),
                dedup_key=key,
                sender=_person(n.sender),
                post=post,
                comment_id=n.comment_id,
                parent_id=n.parent_id,
                text=n.text,
            )
        ]
    if update.business_message is not None:
        b = update.business_message
        echo = InboundEcho(
            chat=b.chat.id,
            timestamp=float(b.date),
            dedup_key=key,
            client=_person(b.to),
            message_id=b.message_id,
            text=b.text,
            reply_to=b.reply_to,
            author=_person(b.sender),
        )
        return [echo]
    return []  # an update kind this adapter does not know yet: acknowledge and ignore it


class FakeChatAdapter(MessengerAdapter):
    """The fakechat messenger: one instance per bot token.

    Everything but a reply window: subclass it with ``reply_window`` and
    ``Capability.time_window`` to test window handling.
    """

    name = "fake"
    settings = FakeChatSettings
    capabilities = frozenset(
        {
            Capability.write_first,
            Capability.typing,
            Capability.reactions,
            Capability.comments,
            Capability.templates,
            Capability.list_messages,
            Capability.buttons,
            Capability.media,
            Capability.edits,
            Capability.replies,
            Capability.delivery_receipts,
            Capability.read_receipts,
        }
    )
    reactions = ReactionSet.of(*REACTIONS)
    rate_limits = (RateLimit(count=30, per=1.0),)
    sandbox_factory = FakeChat

    config: FakeChatSettings

    # -- webhooks ---------------------------------------------------------------------------

    async def verify_headers(self, request: WebhookRequest) -> None:
        """Refuse a request without an ``X-Fakechat-Signature`` of the right form, before its body is read."""
        if not re.fullmatch(r"sha256=[0-9a-f]{64}", request.headers.get(SIGNATURE_HEADER, "")):
            raise SignatureError(f"{SIGNATURE_HEADER} is missing or not 'sha256=' and a hex HMAC-SHA256")

    async def verify(self, request: WebhookRequest) -> WebhookResponse | None:
        """Check ``X-Fakechat-Signature`` against the HMAC-SHA256 of the raw body, in constant time."""
        given = request.headers.get(SIGNATURE_HEADER)
        if not given:
            raise SignatureError(f"{SIGNATURE_HEADER} header is missing")
        expected = signature_of(request.body, self.config.secret)
        if not same_secret(given, expected):
            raise SignatureError(f"{SIGNATURE_HEADER} does not match the body: check the instance's secret")
        return None

    async def parse(self, request: WebhookRequest) -> Sequence[InboundEvent]:
        """The neutral event in one update (none for an update kind not known here)."""
        try:
            update = msgspec.json.decode(request.body, type=_Update)
        except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
            raise WebhookError(f"fakechat update is malformed: {exc}") from exc
        # A press hands amoCRM back the long data a key stood for; a key no longer kept, its text.
        return await self.context.button_data.resolved(_events(update))

    # -- the Bot API ------------------------------------------------------------------------

    async def _call(self, method: str, params: dict[str, Any]) -> Any:
        """Call Bot API ``method``; its result, or the error mapped to a ``MessengerError``."""
        url = f"{self.config.api_url}/bot{self.config.token}/{method}"
        try:
            response = await self.context.http.post(url, json=params)
        except httpx.TransportError as exc:  # the message leaves out the URL: it holds the token
            raise MessengerError(f"fakechat {method}: {type(exc).__name__}", retryable=True) from exc
        try:
            reply = msgspec.json.decode(response.content, type=_Reply)
        except msgspec.DecodeError:
            status = response.status_code
            if 200 <= status < 300:
                raise MessengerError(f"fakechat {method}: answer is not a Bot API envelope") from None
            raise MessengerError(f"fakechat {method}: HTTP {status}", code=status, retryable=status >= 500) from None
        if reply.ok:
            return reply.result
        raise self._error(method, reply.error_code or response.status_code, reply)

    @staticmethod
    def _error(method: str, code: int, reply: _Reply) -> MessengerError:
        description = reply.description or f"fakechat {method} failed with {code}"
        if code == 429:
            retry_after = reply.parameters.retry_after if reply.parameters else None
            return RateLimited(description, retry_after=retry_after if retry_after is not None else 1.0, code=code)
        if code >= 500:
            return MessengerError(description, code=code, retryable=True)
        if code == 401:
            return MessengerError(
                f"fakechat refused the bot token ({description}): check the instance's token", code=code
            )
        if code == 403:
            return MessengerError(description, code=code, reason="blocked")
        lowered = description.lower()
        if "chat not found" in lowered or "phone is not registered" in lowered:
            return MessengerError(description, code=code, reason="no_chat")
        return MessengerError(description, code=code)

    # -- sends ------------------------------------------------------------------------------

    async def send_message(self, message: OutgoingMessage) -> SendResult:
        """Send text, a list, a template or media (text as the first caption); write first by phone via ``openChat``."""
        # fakechat's callback_data holds 64 bytes, like Telegram's: longer data goes under a short key.
        message = await self.context.button_data.keyed(message, _fits_callback_data)
        opened: str | None = None
        chat = message.chat
        if chat is None:
            result = await self._call("openChat", {"phone": message.phone})
            chat = opened = str(result["chat_id"])
        extras: dict[str, Any] = {}
        if message.reply_to is not None:
            extras["reply_to"] = message.reply_to
        if message.buttons:
            extras["buttons"] = [[msgspec.to_builtins(button) for button in row] for row in message.buttons]
        ids: list[str] = []
        for attachment in message.attachments:
            if attachment.url is None:
                raise MessengerError("fakechat sends media by URL; the attachment has none")
            params = {"chat_id": chat, "kind": attachment.kind, "url": attachment.url, **extras}
            if attachment.file_name:
                params["file_name"] = attachment.file_name
            if not ids and message.text:
                params["caption"] = message.text
            ids.append(str((await self._call("sendMedia", params))["message_id"]))
            extras = {}
        if not message.attachments:
            params = {"chat_id": chat, "text": message.text, **extras}
            if message.list_message is not None:
                params["list"] = msgspec.to_builtins(message.list_message)
            if message.template is not None:
                template = message.template
                params["template"] = {
                    "name": template.external_id or template.id,
                    "params": [param.value for param in template.params],
                }
            ids.append(str((await self._call("sendMessage", params))["message_id"]))
        return SendResult(message_ids=tuple(ids), chat=opened)

    async def send_reaction(self, reaction: OutgoingReaction) -> None:
        """Set (or remove) the bot's reaction with ``setReaction``, in fakechat's own spelling of the emoji."""
        emoji = "" if reaction.removed else (self.reactions.match(reaction.emoji) or reaction.emoji)
        await self._call("setReaction", {"chat_id": reaction.chat, "message_id": reaction.message_id, "emoji": emoji})

    async def send_typing(self, typing: OutgoingTyping) -> None:
        """Show the bot typing (fakechat shows it for a few seconds); comment threads show no typing."""
        if typing.post_id is None:
            await self._call("sendTyping", {"chat_id": typing.chat})

    async def send_comment_reply(self, reply: OutgoingCommentReply) -> SendResult:
        """Answer a comment in public with ``answerComment``."""
        params = {"post_id": reply.post_id, "comment_id": reply.comment_id, "text": reply.text}
        result = await self._call("answerComment", params)
        return SendResult(message_ids=(str(result["comment_id"]),))

    async def fetch_media(self, handle: str) -> FetchedMedia:
        """Download a client's file: ``getFile`` for its path, then the token-protected download URL."""
        info = msgspec.convert(await self._call("getFile", {"file_id": handle}), _FileInfo)
        url = f"{self.config.api_url}/file/bot{self.config.token}/{info.file_path}"
        try:
            response = await self.context.http.get(url)
        except httpx.TransportError as exc:
            raise MessengerError(f"fakechat file download: {type(exc).__name__}", retryable=True) from exc
        if response.status_code != 200:
            status = response.status_code
            raise MessengerError(f"fakechat file download: HTTP {status}", code=status, retryable=status >= 500)
        return FetchedMedia(
            content=response.content,
            content_type=response.headers.get("content-type"),
            size=info.file_size,
        )

    # -- lifecycle --------------------------------------------------------------------------

    async def startup(self) -> None:
        """Register ``context.public_url`` and the secret with ``setWebhook`` (when the instance is served)."""
        if self.context.public_url:
            await self._call("setWebhook", {"url": self.context.public_url, "secret": self.config.secret})


@hookimpl
def register_messengers(register: RegisterMessenger) -> None:
    """Register :class:`FakeChatAdapter` as messenger ``fake``."""
    register(FakeChatAdapter)
