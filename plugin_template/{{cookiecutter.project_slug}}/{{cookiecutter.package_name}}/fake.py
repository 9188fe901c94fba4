{% set c = cookiecutter %}
{% set P = c.__class_prefix %}
{% set receipts = c.with_delivery_receipts or c.with_read_receipts %}
{% set presses = c.with_buttons or c.with_list_messages %}
"""A fake of {{ c.messenger_name }}'s API: for the tests, the sandbox and the conformance suite.

PLACEHOLDER: this is an example API, not {{ c.messenger_name }}'s. Make it the real one, as
faithfully as the real documentation allows (paths, parameters, the envelope, the refusals,
the webhook's shape and signature), and the adapter with it.

The API: JSON ``POST /v1/{method}`` with ``Authorization: Bearer <token>``, answering
``{"result": ...}`` or ``{"error": {"code", "message", "retry_after"?}}`` with the HTTP status.
The methods: ``webhook/set``, ``messages/send``{% if c.with_reactions %}, ``reactions/set``{% endif %}{% if c.with_typing %}, ``typing/start``{% endif %}{% if c.with_comments %}, ``comments/reply``{% endif %}.
{% if c.with_media %}
``GET /v1/files/{file_id}`` downloads a client's file.
{% endif %}
Webhooks are one event per POST, ``{"event_id", "type", ...}``, signed in the
``X-{{ P }}-Signature`` header (``sha256=<hex HMAC-SHA256 of the body>``). The client side is
scriptable (``client_writes`` and the rest{% if c.with_echoes %}; ``business_writes`` is the business
answering in the messenger's own app, an ``echo`` webhook{% endif %}), and :meth:`{{ P }}Fake.received` and friends say
what the connector did, as :class:`amoconnect.testing.fakes.ConformanceMessenger` asks.
"""

from __future__ import annotations

import hashlib
import hmac
{% if c.with_media %}
import mimetypes
{% endif %}
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any{% if receipts %}, Literal{% endif %}


import httpx
import msgspec
{% set model = [] %}
{% if c.with_buttons %}{% set _ = model.append("Button") %}{% endif %}
{% if c.with_list_messages %}{% set _ = model.append("ListMessage") %}{% endif %}
{% if c.with_media %}{% set _ = model.append("MediaKind") %}{% endif %}
{% if model %}
from amoconnect.model import {{ model | join(", ") }}
{% endif %}
from amoconnect.testing.fakes import (
    ApiError,
{% if c.with_media %}
    ClientMedia,
{% endif %}
    FakeAPI,
    ReceivedMessage,
{% if c.with_reactions %}
    ReceivedReaction,
{% endif %}
    WebhookSender,
)
{% if c.with_media %}
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
{% else %}
from starlette.routing import BaseRoute
{% endif %}

__all__ = ["MAX_TEXT_LENGTH", {% if c.with_reactions %}"REACTIONS", {% endif %}"SIGNATURE_HEADER", "{{ P }}Fake"]

MAX_TEXT_LENGTH = 4096
"""The longest text ``messages/send`` takes."""
SIGNATURE_HEADER = "X-{{ P }}-Signature"
"""The header of a webhook's signature."""
{% if c.with_reactions %}
REACTIONS = ("👍", "❤️", "😂", "😮", "😢", "🙏")
"""The only emoji the messenger takes as reactions."""
{% endif %}


# -- the API's parameters, decoded strictly: a field the real API does not know is a 400 ---------


class _Params(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    pass


class _SetWebhook(_Params):
    url: str
    secret: str = ""


{% if c.with_media %}
class _MediaRef(_Params):
    kind: MediaKind
    url: str
    file_name: str = ""


{% endif %}
{% if c.with_buttons %}
class _Button(_Params):
    text: str
    url: str | None = None
    data: str | None = None


{% endif %}
{% if c.with_list_messages %}
class _ListRow(_Params):
    callback_data: str
    title: str
    description: str = ""


class _ListSection(_Params):
    title: str
    rows: list[_ListRow]


class _ListMenu(_Params):
    body: str
    button: str
    sections: list[_ListSection]
    header: str = ""
    footer: str = ""


{% endif %}
{% if c.with_templates %}
class _TemplateRef(_Params):
    name: str
    params: list[str] = []


{% endif %}
class _Send(_Params):
    chat_id: str | None = None
{% if c.with_write_first %}
    phone: str | None = None
{% endif %}
    text: str = ""
{% if c.with_media %}
    media: _MediaRef | None = None
{% endif %}
{% if c.with_replies %}
    reply_to: str | None = None
{% endif %}
{% if c.with_buttons %}
    buttons: list[list[_Button]] = []
{% endif %}
{% if c.with_list_messages %}
    menu: _ListMenu | None = msgspec.field(default=None, name="list")
{% endif %}
{% if c.with_templates %}
    template: _TemplateRef | None = None
{% endif %}


{% if c.with_reactions %}
class _SetReaction(_Params):
    chat_id: str
    message_id: str
    emoji: str = ""


{% endif %}
{% if c.with_typing %}
class _ChatOnly(_Params):
    chat_id: str


{% endif %}
{% if c.with_comments %}
class _AnswerComment(_Params):
    post_id: str
    comment_id: str
    text: str


{% endif %}
@dataclass(kw_only=True)
class _Chat:
    id: str
    name: str
    phone: str | None = None
    blocked: bool = False
    messages: dict[str, bool] = field(default_factory=dict)
    """Message id → whether the connector sent it."""
    received: list[ReceivedMessage] = field(default_factory=list)

    def user(self) -> dict[str, Any]:
        found = {"id": f"u{self.id}", "name": self.name, "phone": self.phone}
        return {key: value for key, value in found.items() if value is not None}


def _signature(body: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class {{ P }}Fake(FakeAPI):
    """The messenger's API (:attr:`app`), its world in memory and its clients, scriptable.

    ``http`` delivers webhooks to the connector; ``token`` is the one account's API token;
    ``clock`` gives unix seconds; a webhook is tried ``delivery_attempts`` times.
    """

    def __init__(
        self,
        token: str = "{{ c.messenger_slug }}-token",
        *,
        http: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.time,
        delivery_attempts: int = 3,
        delivery_backoff: float = 0.05,
    ) -> None:
        self.webhooks = WebhookSender(http, sign=self._sign, attempts=delivery_attempts, backoff=delivery_backoff)
        """Webhook delivery: ``url`` once the adapter registered it, and every attempt in ``deliveries``."""
        self.webhook_secret = ""
        self.sandbox_secret = secrets.token_hex(16)
        self.chats: dict[str, _Chat] = {}
{% if receipts %}
        self.sandbox_reported: dict[str, int] = {}
        """Per chat, how many of the connector's messages the sandbox's client has reported."""
{% endif %}
{% if c.with_write_first %}
        self.phones: dict[str, str] = {}
{% endif %}
{% if c.with_media %}
        self.files: dict[str, tuple[bytes, str]] = {}
{% endif %}
{% if c.with_reactions %}
        self.reactions: list[tuple[str, ReceivedReaction]] = []
{% endif %}
{% if c.with_typing %}
        self.typing: list[str] = []
{% endif %}
{% if c.with_comments %}
        self.posts: dict[str, set[str]] = {}
        self.comment_replies: dict[str, list[str]] = {}
{% endif %}
        super().__init__(token, clock=clock)

    def routes(self) -> list[BaseRoute]:
        """The API's methods."""
        return [
            self.method("/v1/webhook/set", self._set_webhook, _SetWebhook, name="webhook/set"),
            self.method("/v1/messages/send", self._send, _Send, name="messages/send"),
{% if c.with_reactions %}
            self.method("/v1/reactions/set", self._set_reaction, _SetReaction, name="reactions/set"),
{% endif %}
{% if c.with_typing %}
            self.method("/v1/typing/start", self._typing, _ChatOnly, name="typing/start"),
{% endif %}
{% if c.with_comments %}
            self.method("/v1/comments/reply", self._answer_comment, _AnswerComment, name="comments/reply"),
{% endif %}
{% if c.with_media %}
            Route("/v1/files/{file_id}", self._download, methods=["GET"]),
{% endif %}
        ]

    def _sign(self, body: bytes) -> dict[str, str]:
        return {SIGNATURE_HEADER: _signature(body, self.webhook_secret)} if self.webhook_secret else {}

    # -- the API ----------------------------------------------------------------------------

    def _chat(self, chat_id: str) -> _Chat:
        chat = self.chats.get(chat_id)
        if chat is None:
            raise ApiError(404, "chat not found")
        if chat.blocked:
            raise ApiError(403, "the user blocked the account")
        return chat

    def _set_webhook(self, params: _SetWebhook) -> bool:
        if not params.url.startswith(("http://", "https://")):
            raise ApiError(400, "url must be an HTTP URL")
        self.webhooks.url, self.webhook_secret = params.url, params.secret
        return True

    def _send(self, params: _Send) -> dict[str, str]:
        chat_id = params.chat_id
{% if c.with_write_first %}
        if chat_id is None and params.phone is not None:
            chat_id = self.phones.get(params.phone)
            if chat_id is None:
                raise ApiError(404, "phone is not registered")
{% endif %}
        if chat_id is None:
            raise ApiError(400, "chat_id is required")
        chat = self._chat(chat_id)
        if len(params.text) > MAX_TEXT_LENGTH:
            raise ApiError(400, "text is too long")
        kind = "text"
{% if c.with_media %}
        if params.media is not None:
            kind = params.media.kind
{% endif %}
{% if c.with_list_messages %}
        if params.menu is not None:
            kind = "list"
            if not [row for section in params.menu.sections for row in section.rows]:
                raise ApiError(400, "a list needs rows")
{% endif %}
{% if c.with_templates %}
        if params.template is not None:
            kind = "template"
{% endif %}
        if kind == "text" and not params.text:
            raise ApiError(400, "text is empty")
{% if c.with_replies %}
        if params.reply_to is not None and params.reply_to not in chat.messages:
            raise ApiError(400, "message to reply to not found")
{% endif %}
{% if c.with_buttons %}
        if any((b.url is None) == (b.data is None) for row in params.buttons for b in row):
            raise ApiError(400, "a button needs exactly one of url and data")
{% endif %}
        message_id = self.next_id("m")
        chat.messages[message_id] = True
        chat.received.append(
            ReceivedMessage(
                message_id=message_id,
{% if c.with_list_messages %}
                text=params.text or (params.menu.body if params.menu is not None else ""),
{% else %}
                text=params.text,
{% endif %}
                kind=kind,
{% if c.with_media %}
                media_url=params.media.url if params.media is not None else None,
                file_name=params.media.file_name if params.media is not None else "",
{% endif %}
{% if c.with_buttons %}
                buttons=tuple(
                    tuple(Button(text=b.text, url=b.url, callback_data=b.data) for b in row) for row in params.buttons
                ),
{% endif %}
{% if c.with_list_messages %}
                list_message=msgspec.convert(msgspec.to_builtins(params.menu), ListMessage) if params.menu else None,
{% endif %}
{% if c.with_templates %}
                template=params.template.name if params.template is not None else None,
                template_params=tuple(params.template.params) if params.template is not None else (),
{% endif %}
{% if c.with_replies %}
                reply_to=params.reply_to,
{% endif %}
            )
        )
        return {"message_id": message_id, "chat_id": chat.id}
{% if c.with_reactions %}

    def _set_reaction(self, params: _SetReaction) -> bool:
        chat = self._chat(params.chat_id)
        if params.message_id not in chat.messages:
            raise ApiError(400, "message not found")
        if params.emoji and params.emoji not in REACTIONS:
            raise ApiError(400, "reaction not allowed")
        self.reactions.append((chat.id, ReceivedReaction(params.message_id, params.emoji)))
        return True
{% endif %}
{% if c.with_typing %}

    def _typing(self, params: _ChatOnly) -> bool:
        self.typing.append(self._chat(params.chat_id).id)
        return True
{% endif %}
{% if c.with_comments %}

    def _answer_comment(self, params: _AnswerComment) -> dict[str, str]:
        comments = self.posts.get(params.post_id)
        if comments is None:
            raise ApiError(404, "post not found")
        if params.comment_id not in comments:
            raise ApiError(404, "comment not found")
        if not params.text:
            raise ApiError(400, "text is empty")
        answer = self.next_id("c")
        comments.add(answer)
        self.comment_replies.setdefault(params.post_id, []).append(params.text)
        return {"comment_id": answer}
{% endif %}
{% if c.with_media %}

    async def _download(self, request: Request) -> Response:
        refused = self.guard(request, "files")
        if refused is not None:
            return self.error(refused)
        found = self.files.get(request.path_params["file_id"])
        if found is None:
            return self.error(ApiError(404, "file not found"))
        return Response(found[0], media_type=found[1])
{% endif %}

    # -- the world --------------------------------------------------------------------------

    def join(self, chat: str, *, name: str | None = None) -> _Chat:
        """The client of ``chat``, who joins the messenger on first use."""
        found = self.chats.get(chat)
        if found is None:
            found = self.chats[chat] = _Chat(id=chat, name=name or f"Client {chat}")
        return found

    def block(self, chat: str, blocked: bool = True) -> None:
        """The client blocks the account (``blocked=False``: unblocks); sends to the chat then get 403."""
        self.join(chat).blocked = blocked
{% if c.with_write_first %}

    def register_phone(self, phone: str) -> str:
        """A person with ``phone`` joins the messenger; the chat id that writing to the phone opens."""
        chat = self.phones.setdefault(phone, "".join(digit for digit in phone if digit.isdigit()))
        self.join(chat).phone = phone
        return chat
{% endif %}

    # -- what the connector did -------------------------------------------------------------

    def received(self, chat: str) -> list[ReceivedMessage]:
        """What the connector sent to ``chat``, oldest first."""
        found = self.chats.get(chat)
        return list(found.received) if found is not None else []
{% if c.with_reactions %}

    def received_reactions(self, chat: str) -> list[ReceivedReaction]:
        """The reactions the connector set (or, with an empty emoji, took back) in ``chat``."""
        return [reaction for where, reaction in self.reactions if where == chat]
{% endif %}
{% if c.with_typing %}

    def received_typing(self, chat: str) -> int:
        """How many times the connector showed typing in ``chat``."""
        return self.typing.count(chat)
{% endif %}
{% if c.with_comments %}

    def received_comment_replies(self, post_id: str) -> list[str]:
        """What the connector answered in public under post ``post_id``."""
        return list(self.comment_replies.get(post_id, []))
{% endif %}

    # -- the sandbox (amoconnect run --sandbox) ---------------------------------------------

    def sandbox_settings(self, api_url: str) -> dict[str, Any]:
        """Settings of an instance talking to this fake at ``api_url``; its startup registers the webhook."""
        return {"token": self.token, "secret": self.sandbox_secret, "api_url": api_url}

    async def sandbox_client_writes(self, chat: str, text: str) -> None:
        """A client writes ``text`` in ``chat``."""
        await self.client_writes(chat, text)

    def sandbox_received(self, chat: str) -> list[str]:
        """The texts the connector sent to ``chat``."""
        return [message.text for message in self.received(chat)]
{% if receipts %}

    async def sandbox_client_reads(self, chat: str) -> None:
        """The client's device reports what the connector sent to ``chat`` since the last call
        {{ "delivered and read" if c.with_delivery_receipts and c.with_read_receipts else ("read" if c.with_read_receipts else "delivered") }}."""
        for message in self.received(chat)[self.sandbox_reported.get(chat, 0) :]:
{% if c.with_delivery_receipts %}
            await self.deliver_status(chat, message.message_id, "delivered")
{% endif %}
{% if c.with_read_receipts %}
            await self.deliver_status(chat, message.message_id, "read")
{% endif %}
        self.sandbox_reported[chat] = len(self.received(chat))
{% endif %}

    # -- the clients ------------------------------------------------------------------------

    def _event(self, kind: str, chat: _Chat, **fields: Any) -> dict[str, Any]:
        return {
            "event_id": self.next_id("e"),
            "type": kind,
            "chat_id": chat.id,
            "user": chat.user(),
            "timestamp": self.clock(),
            **fields,
        }

    async def client_writes(
        self,
        chat: str,
        text: str = "",
        *,
{% if c.with_media %}
        media: ClientMedia | None = None,
{% endif %}
{% if c.with_replies %}
        reply_to: str | None = None,
{% endif %}
        name: str | None = None,
    ) -> int | None:
        """The client of ``chat`` (who joins on first use) sends a message; the webhook's HTTP status."""
        client = self.join(chat, name=name)
        message_id = self.next_id("m")
        fields: dict[str, Any] = {"message_id": message_id, "text": text}
{% if c.with_media %}
        if media is not None:
            file_id = self.next_id("f")
            mime_type = media.mime_type or mimetypes.guess_type(media.file_name)[0] or "application/octet-stream"
            self.files[file_id] = (media.content, mime_type)
            fields["media"] = {
                "kind": media.kind,
                "file_id": file_id,
                "file_name": media.file_name,
                "mime_type": mime_type,
                "size": len(media.content),
            }
{% endif %}
{% if c.with_replies %}
        if reply_to is not None:
            if reply_to not in client.messages:
                raise LookupError(f"chat {chat!r} has no message {reply_to!r} to reply to")
            fields["reply_to"] = reply_to
{% endif %}
        client.messages[message_id] = False
        return await self.webhooks.send(self._event("message", client, **fields))
{% if c.with_echoes %}

    async def business_writes(self, chat: str, text: str, *, reply_to: str | None = None) -> int | None:
        """The business answers in the messenger's own app: an ``echo`` webhook (API sends make none)."""
        client = self.join(chat)
        if reply_to is not None and reply_to not in client.messages:
            raise LookupError(f"chat {chat!r} has no message {reply_to!r} to reply to")
        message_id = self.next_id("m")
        client.messages[message_id] = True
        author = {"id": "owner", "name": "The owner"}
        fields = {"message_id": message_id, "text": text, "reply_to": reply_to, "author": author}
        return await self.webhooks.send(self._event("echo", client, **fields))
{% endif %}
{% if c.with_edits %}

    async def client_edits(self, chat: str, message_id: str, text: str) -> int | None:
        """The client edits its message ``message_id`` to ``text``."""
        client = self.join(chat)
        if client.messages.get(message_id) is not False:
            raise LookupError(f"chat {chat!r} has no client message {message_id!r}")
        return await self.webhooks.send(self._event("edit", client, message_id=message_id, text=text))
{% endif %}
{% if presses %}

    async def client_presses(self, chat: str, callback_data: str) -> int | None:
        """The client presses the newest button{% if c.with_list_messages %} (or picks the list row){% endif %} with ``callback_data``."""
        client = self.join(chat)
        for message in reversed(client.received):
            labels = {b.callback_data: b.text for row in message.buttons for b in row if b.callback_data}
            if message.list_message is not None:
                sections = message.list_message.sections
                labels.update({row.callback_data: row.title for section in sections for row in section.rows})
            if callback_data in labels:
                press = {"press_id": self.next_id("p"), "data": callback_data, "label": labels[callback_data]}
                return await self.webhooks.send(self._event("press", client, **press))
        raise LookupError(f"chat {chat!r} got no button or list row with data {callback_data!r}")
{% endif %}
{% if c.with_reactions %}

    async def client_reacts(self, chat: str, message_id: str, emoji: str, removed: bool = False) -> int | None:
        """The client sets (or, ``removed``, takes back) a reaction on a message of the chat."""
        client = self.join(chat)
        if message_id not in client.messages:
            raise LookupError(f"chat {chat!r} has no message {message_id!r}")
        if not removed and emoji not in REACTIONS:
            raise ValueError(f"the messenger offers only the reactions {' '.join(REACTIONS)}, not {emoji!r}")
        reaction = {"message_id": message_id, "emoji": "" if removed else emoji}
        return await self.webhooks.send(self._event("reaction", client, **reaction))
{% endif %}
{% if c.with_typing %}

    async def client_types(self, chat: str) -> int | None:
        """The client starts typing."""
        return await self.webhooks.send(self._event("typing", self.join(chat)))
{% endif %}
{% if receipts %}

    async def deliver_status(
        self, chat: str, message_id: str, status: Literal["delivered", "read", "failed"], *, error: str = ""
    ) -> int | None:
        """The messenger reports a message the connector sent delivered, read or failed (``error`` says why)."""
        client = self.join(chat)
        if client.messages.get(message_id) is not True:
            raise LookupError(f"chat {chat!r} has no message {message_id!r} from the connector")
        report: dict[str, Any] = {"message_id": message_id, "status": status}
        if status == "failed":
            report["error"] = {"code": 400, "message": error or "message could not be delivered"}
        event = self._event("status", client, **report)
        del event["user"]
        return await self.webhooks.send(event)
{% endif %}
{% if c.with_comments %}

    async def client_comments(self, chat: str, post_id: str, text: str, *, parent_id: str | None = None) -> int | None:
        """The client of ``chat`` comments on post ``post_id`` (published on first use)."""
        client = self.join(chat)
        comments = self.posts.setdefault(post_id, set())
        if parent_id is not None and parent_id not in comments:
            raise LookupError(f"post {post_id!r} has no comment {parent_id!r}")
        comment_id = self.next_id("c")
        comments.add(comment_id)
        post = {"id": post_id, "url": f"https://{{ c.messenger_slug | replace('_', '-') }}.example/posts/{post_id}"}
        fields: dict[str, Any] = {"post": post, "comment_id": comment_id, "text": text}
        if parent_id is not None:
            fields["parent_id"] = parent_id
        return await self.webhooks.send(self._event("comment", client, **fields))
{% endif %}
