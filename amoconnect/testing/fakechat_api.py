"""fakechat: a tiny messenger with a Bot API, served in-process for tests, the sandbox and plugin authors.

:class:`FakeChat` behaves like a real messenger's Bot API (a small Telegram): it checks the bot
token, answers in a JSON envelope, refuses what a real API refuses, throttles, and delivers
signed webhook updates with retries. Its client side is scriptable::

    fake = FakeChat("42:secret-token", http=httpx.AsyncClient(transport=httpx.ASGITransport(app=connector)))
    fake.set_webhook("http://connector.test/hooks/fake/main", "webhook-secret")
    await fake.client_writes("c1", "Hello")           # the update reaches the connector, signed
    bot = httpx.AsyncClient(transport=httpx.ASGITransport(app=fake.app), base_url="http://fakechat.test")
    await bot.post("/bot42:secret-token/sendMessage", json={"chat_id": "c1", "text": "Hi!"})
    fake.sent_to("c1")                                 # [BotMessage(text="Hi!", ...)]

It is the reference :class:`~amoconnect.testing.fakes.ConformanceMessenger`: ``received(chat)``,
``received_reactions``, ``received_typing`` and ``received_comment_replies`` tell the conformance
suite what the bot did.

The Bot API lives under ``/bot{token}/{method}`` (POST, JSON body) and answers
``{"ok": true, "result": ...}`` or ``{"ok": false, "error_code": N, "description": "...",
"parameters": {"retry_after": S}}``. Files the clients sent are downloaded from
``/file/bot{token}/{file_path}`` (the path comes from ``getFile``); that URL carries the token,
so it must never leave the connector.

Refusals: 401 ``Unauthorized`` (wrong token, also for downloads) · 404 ``Not Found: method not
found`` · 400 ``Bad Request: chat not found`` · 403 ``Forbidden: bot was blocked by the user``
· 400 ``Bad Request: message is too long`` (text > 4096) / ``message caption is too long``
(caption > 1024) / ``message text is empty`` / ``message to reply not found`` /
``phone is not registered`` / ``REACTION_INVALID`` / ``BUTTON_DATA_INVALID`` /
``wrong file_id`` / ``post not found`` / ``comment not found`` / a parameter of the wrong type
· 429 ``Too Many Requests: retry after S`` past ``rate_limit`` messages per second, with
``parameters.retry_after`` · whatever :meth:`FakeChat.fail_next` injects.

Webhook updates are ``{"update_id": N, "<kind>": {...}}`` with one kind of ``message``,
``edited_message``, ``callback``, ``reaction``, ``typing``, ``status`` and ``comment``, POSTed
one at a time in ``update_id`` order with ``X-Fakechat-Signature: sha256=<hex HMAC-SHA256 of
the body keyed with the webhook secret>``; a non-2xx answer or a connection error is retried a
few times with a short, doubling backoff.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import math
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, Literal

import anyio
import httpx
import msgspec
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..model import Button, ListMessage
from ..signing import same_secret
from . import _fakechat_wire as wire
from ._fakechat_wire import (
    MAX_CALLBACK_DATA,
    MAX_CAPTION_LENGTH,
    MAX_TEXT_LENGTH,
    REACTIONS,
    BotMessage,
    BotReaction,
    ClientMedia,
    CommentAnswer,
    Delivery,
    TypingEvent,
)
from .fakes import ConformanceMessenger, ReceivedMessage, ReceivedReaction

__all__ = [
    "DEFAULT_TOKEN",
    "MAX_CALLBACK_DATA",
    "MAX_CAPTION_LENGTH",
    "MAX_TEXT_LENGTH",
    "REACTIONS",
    "SIGNATURE_HEADER",
    "BotMessage",
    "BotReaction",
    "ClientMedia",
    "CommentAnswer",
    "Delivery",
    "FakeChat",
    "TypingEvent",
    "error_response",
    "signature_of",
]

DEFAULT_TOKEN: Final = "1000:sandbox-token"
"""The bot token of a :class:`FakeChat` built without one (the sandbox's)."""
SIGNATURE_HEADER: Final = "X-Fakechat-Signature"
"""Header of a webhook update's signature: ``sha256=<hex>``."""


def signature_of(body: bytes, secret: str) -> str:
    """The ``X-Fakechat-Signature`` value of a webhook ``body`` signed with ``secret``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def error_response(status: int, retry_after: float | None = None, description: str | None = None) -> JSONResponse:
    """A Bot API error answer as fakechat gives it; a 429 says how long to wait in ``parameters.retry_after``."""
    if not description:
        description = wire.DEFAULT_DESCRIPTIONS.get(status, "Injected failure")
        if status == 429 and retry_after is not None:
            description = f"Too Many Requests: retry after {retry_after:g}"
    return wire.error_response(status, description, retry_after)


def _received(message: BotMessage) -> ReceivedMessage:
    template = message.template or {}
    return ReceivedMessage(
        message_id=message.message_id,
        text=message.text,
        kind=message.kind,
        media_url=message.url,
        file_name=message.file_name,
        buttons=tuple(tuple(msgspec.convert(button, Button) for button in row) for row in message.buttons),
        list_message=msgspec.convert(message.list_menu, ListMessage) if message.list_menu is not None else None,
        template=template.get("name"),
        template_params=tuple(template.get("params", ())),
        reply_to=message.reply_to,
    )


# -- the service --------------------------------------------------------------------------------


class FakeChat:
    """The fakechat messenger: a Bot API (:attr:`app`), an in-memory world and a scriptable client side.

    ``token`` is the one bot's token; ``http`` delivers webhook updates (a fresh client per
    delivery when ``None``); ``rate_limit`` caps the messages the bot may send per second
    (``None``: no cap); ``clock`` gives unix seconds; a delivery is tried ``delivery_attempts``
    times, waiting ``delivery_backoff`` seconds after the first failure, twice that after the
    next, and so on.
    """

    def __init__(
        self,
        token: str = DEFAULT_TOKEN,
        *,
        http: httpx.AsyncClient | None = None,
        rate_limit: float | None = None,
        clock: Callable[[], float] = time.time,
        delivery_attempts: int = 3,
        delivery_backoff: float = 0.05,
        bot_name: str = "fakechat bot",
    ) -> None:
        self.token = token
        self.http = http
        self.rate_limit = rate_limit
        self.clock = clock
        self.delivery_attempts = delivery_attempts
        self.delivery_backoff = delivery_backoff
        self.bot_name = bot_name
        self.webhook_url: str | None = None
        """Where updates go (``setWebhook``); ``None`` until set."""
        self.webhook_secret = ""
        """Key of the updates' signatures (``setWebhook``'s ``secret``); empty: updates are unsigned."""
        self.reactions: list[BotReaction] = []
        """Reactions the bot set or removed, in order."""
        self.typing_events: list[TypingEvent] = []
        """``sendTyping`` calls, in order."""
        self.comment_answers: list[CommentAnswer] = []
        """Public answers the bot gave under comments, in order."""
        self.updates: list[dict[str, Any]] = []
        """Every update created, in ``update_id`` order."""
        self.deliveries: list[Delivery] = []
        """Every delivery attempt, in order."""
        self.calls: list[tuple[str, dict[str, Any], int]] = []
        """Every Bot API call: method, JSON parameters, HTTP status answered."""
        self._world = wire.World()
        self._faults: list[wire.Fault] = []
        self._sent_times: list[float] = []
        self._update_ids = itertools.count(1)
        self._duplicate = False
        self._sandbox_secret = secrets.token_hex(16)
        self._delivery_lock = anyio.Lock()
        self.app = Starlette(
            routes=[
                Route("/bot{token}/{method}", self._api, methods=["POST"]),
                Route("/file/bot{token}/{file_path:path}", self._download, methods=["GET"]),
            ],
            exception_handlers={HTTPException: self._http_error},
        )
        """The ASGI app serving the Bot API and file downloads."""
        self._methods: dict[str, tuple[type[wire.Params], Callable[[Any], Any]]] = {
            "getMe": (wire.NoParams, self._get_me),
            "setWebhook": (wire.SetWebhook, self._set_webhook),
            "sendMessage": (wire.SendMessage, self._send_message),
            "sendMedia": (wire.SendMedia, self._send_media),
            "openChat": (wire.OpenChat, self._open_chat),
            "setReaction": (wire.SetReaction, self._set_reaction),
            "sendTyping": (wire.ChatOnly, self._send_typing),
            "answerComment": (wire.AnswerComment, self._answer_comment),
            "getFile": (wire.GetFile, self._get_file),
        }

    # -- HTTP ---------------------------------------------------------------------------------------

    async def _http_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return wire.error_response(exc.status_code, wire.DEFAULT_DESCRIPTIONS.get(exc.status_code, exc.detail))

    def _take_fault(self, method: str) -> wire.Fault | None:
        for fault in self._faults:
            if fault.method in (None, method):
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self._faults.remove(fault)
                return fault
        return None

    def _token_ok(self, token: str) -> bool:
        return same_secret(token, self.token)

    async def _api(self, request: Request) -> Response:
        method = request.path_params["method"]
        body = await request.body()
        try:
            raw = msgspec.json.decode(body) if body.strip() else {}
        except msgspec.DecodeError:
            raw = None
        params = raw if isinstance(raw, dict) else {}
        response = self._answer(request.path_params["token"], method, body, raw)
        self.calls.append((method, params, response.status_code))
        return response

    def _answer(self, token: str, method: str, body: bytes, raw: Any) -> Response:
        fault = self._take_fault(method)
        if fault is not None:
            return error_response(fault.status, fault.retry_after, fault.description)
        if not self._token_ok(token):
            return wire.error_response(401, "Unauthorized")
        entry = self._methods.get(method)
        if entry is None:
            return wire.error_response(404, "Not Found: method not found")
        if not isinstance(raw, dict):
            return wire.error_response(400, "Bad Request: the body must be a JSON object")
        kind, handler = entry
        try:
            params = msgspec.json.decode(body if body.strip() else b"{}", type=kind)
        except msgspec.ValidationError as exc:
            return wire.error_response(400, f"Bad Request: {exc}")
        try:
            result = handler(params)
        except wire.ApiError as exc:
            return wire.error_response(exc.status, exc.description, exc.retry_after)
        return JSONResponse({"ok": True, "result": result})

    async def _download(self, request: Request) -> Response:
        fault = self._take_fault("file")
        if fault is not None:
            return wire.error_response(
                fault.status, fault.description or wire.DEFAULT_DESCRIPTIONS.get(fault.status, "")
            )
        if not self._token_ok(request.path_params["token"]):
            return wire.error_response(401, "Unauthorized")
        stored = self._world.paths.get(request.path_params["file_path"])
        if stored is None:
            return wire.error_response(404, "Not Found: file not found")
        return Response(stored.content, media_type=stored.mime_type)

    # -- Bot API methods ------------------------------------------------------------------------------

    def _chat(self, chat_id: wire.Id) -> wire.User:
        user = self._world.users.get(str(chat_id))
        if user is None:
            wire.fail(400, "Bad Request: chat not found")
        if user.blocked:
            wire.fail(403, "Forbidden: bot was blocked by the user")
        return user

    def _throttle(self) -> None:
        if self.rate_limit is None:
            return
        now = self.clock()
        self._sent_times = [at for at in self._sent_times if now - at < wire.RATE_WINDOW]
        if len(self._sent_times) >= self.rate_limit:
            wait = max(1, math.ceil(self._sent_times[0] + wire.RATE_WINDOW - now))
            wire.fail(429, f"Too Many Requests: retry after {wait}", retry_after=wait)
        self._sent_times.append(now)

    @staticmethod
    def _buttons(rows: list[list[wire.Button]]) -> list[list[dict[str, Any]]]:
        for row in rows:
            for button in row:
                if (button.url is None) == (button.callback_data is None):
                    wire.fail(400, "Bad Request: a button needs exactly one of url and callback_data")
                if (
                    button.callback_data is not None
                    and not 1 <= len(button.callback_data.encode()) <= wire.MAX_CALLBACK_DATA
                ):
                    wire.fail(400, "Bad Request: BUTTON_DATA_INVALID")
        return [[msgspec.to_builtins(button) for button in row] for row in rows]

    def _store(self, user: wire.User, message: BotMessage, reply_to: wire.Id | None) -> dict[str, Any]:
        if reply_to is not None:
            if self._world.message_in(user, reply_to) is None:
                wire.fail(400, "Bad Request: message to reply not found")
            message.reply_to = str(reply_to)
        self._throttle()
        user.messages.append(message)
        return {"message_id": message.message_id, "chat_id": user.chat}

    def _get_me(self, params: wire.NoParams) -> dict[str, Any]:
        return {"id": self.token.partition(":")[0], "name": self.bot_name}

    def _set_webhook(self, params: wire.SetWebhook) -> bool:
        if params.url and not params.url.startswith(("http://", "https://")):
            wire.fail(400, "Bad Request: bad webhook: an HTTP URL must be provided")
        self.set_webhook(params.url or None, params.secret)
        return True

    def _send_message(self, params: wire.SendMessage) -> dict[str, Any]:
        user = self._chat(params.chat_id)
        if len(params.text) > MAX_TEXT_LENGTH:
            wire.fail(400, "Bad Request: message is too long")
        menu = params.menu
        if not params.text and params.template is None and menu is None:
            wire.fail(400, "Bad Request: message text is empty")
        if menu is not None:
            rows = [row for section in menu.sections for row in section.rows]
            if not rows:
                wire.fail(400, "Bad Request: a list needs at least one row")
            if any(not 1 <= len(row.callback_data.encode()) <= wire.MAX_CALLBACK_DATA for row in rows):
                wire.fail(400, "Bad Request: BUTTON_DATA_INVALID")
        kind = "list" if menu is not None else "template" if params.template is not None else "text"
        message = BotMessage(
            message_id=self._world.next_id(),
            chat=user.chat,
            from_bot=True,
            date=int(self.clock()),
            text=params.text or (menu.body if menu is not None else ""),
            kind=kind,
            buttons=self._buttons(params.buttons),
            list_menu=msgspec.to_builtins(menu) if menu is not None else None,
            template=msgspec.to_builtins(params.template) if params.template is not None else None,
        )
        return self._store(user, message, params.reply_to)

    def _send_media(self, params: wire.SendMedia) -> dict[str, Any]:
        user = self._chat(params.chat_id)
        if not params.url.startswith(("http://", "https://")):
            wire.fail(400, "Bad Request: wrong HTTP URL specified")
        if len(params.caption) > MAX_CAPTION_LENGTH:
            wire.fail(400, "Bad Request: message caption is too long")
        message = BotMessage(
            message_id=self._world.next_id(),
            chat=user.chat,
            from_bot=True,
            date=int(self.clock()),
            text=params.caption,
            kind=params.kind,
            url=params.url,
            file_name=params.file_name,
            buttons=self._buttons(params.buttons),
        )
        return self._store(user, message, params.reply_to)

    def _open_chat(self, params: wire.OpenChat) -> dict[str, Any]:
        chat = self._world.phones.get(params.phone)
        if chat is None:
            wire.fail(400, "Bad Request: phone is not registered")
        return {"chat_id": chat}

    def _set_reaction(self, params: wire.SetReaction) -> bool:
        user = self._chat(params.chat_id)
        if self._world.message_in(user, params.message_id) is None:
            wire.fail(400, "Bad Request: message to react not found")
        if params.emoji and params.emoji not in REACTIONS:
            wire.fail(400, "Bad Request: REACTION_INVALID")
        self.reactions.append(BotReaction(user.chat, str(params.message_id), params.emoji))
        return True

    def _send_typing(self, params: wire.ChatOnly) -> bool:
        user = self._chat(params.chat_id)
        self.typing_events.append(TypingEvent(user.chat, self.clock()))
        return True

    def _answer_comment(self, params: wire.AnswerComment) -> dict[str, Any]:
        post = self._world.posts.get(str(params.post_id))
        if post is None:
            wire.fail(400, "Bad Request: post not found")
        if str(params.comment_id) not in post.comments:
            wire.fail(400, "Bad Request: comment not found")
        if not params.text:
            wire.fail(400, "Bad Request: message text is empty")
        if len(params.text) > MAX_TEXT_LENGTH:
            wire.fail(400, "Bad Request: message is too long")
        answer = CommentAnswer(post.id, str(params.comment_id), params.text, f"cm{self._world.next_id()}")
        post.comments.add(answer.answer_id)
        self.comment_answers.append(answer)
        return {"comment_id": answer.answer_id}

    def _get_file(self, params: wire.GetFile) -> dict[str, Any]:
        stored = self._world.files.get(params.file_id)
        if stored is None:
            wire.fail(400, "Bad Request: wrong file_id or the file is temporarily unavailable")
        return {"file_id": params.file_id, "file_size": len(stored.content), "file_path": stored.path}

    # -- world and inspection ---------------------------------------------------------------------------

    def set_webhook(self, url: str | None, secret: str = "") -> None:
        """Deliver updates to ``url`` signed with ``secret`` (what the bot's ``setWebhook`` does); ``None`` stops."""
        self.webhook_url = url
        self.webhook_secret = secret if url else ""

    def register_phone(self, phone: str, *, name: str | None = None) -> str:
        """A person with ``phone`` joins fakechat; returns the chat id ``openChat`` gives for that phone."""
        return self._world.register_phone(phone, name=name)

    def block(self, chat: str, blocked: bool = True) -> None:
        """The client blocks the bot (``blocked=False`` unblocks): sends to the chat then get 403."""
        self._world.known(chat).blocked = blocked

    def add_post(self, post_id: str, *, caption: str = "", url: str | None = None) -> None:
        """Publish a post clients can comment on (``client_comments`` publishes unknown posts itself)."""
        self._world.add_post(post_id, caption=caption, url=url)

    def fail_next(
        self,
        n: int,
        status: int,
        retry_after: float | None = None,
        *,
        method: str | None = None,
        description: str | None = None,
    ) -> None:
        """Answer the next ``n`` requests (to Bot API ``method`` only, ``"file"`` for downloads) with ``status``.

        A 429 carries ``parameters.retry_after`` when ``retry_after`` is given.
        """
        self._faults.append(
            wire.Fault(remaining=n, status=status, retry_after=retry_after, method=method, description=description)
        )

    def duplicate_next(self) -> None:
        """Deliver the next update twice (same body, same ``update_id``), as messengers sometimes do."""
        self._duplicate = True

    # -- the sandbox (amoconnect.sandbox.SandboxMessenger) ---------------------------------------------

    def sandbox_settings(self, api_url: str) -> dict[str, Any]:
        """Settings of a ``fake`` instance talking to this fake at ``api_url`` (its startup sets the webhook)."""
        return {"token": self.token, "secret": self._sandbox_secret, "api_url": api_url}

    async def sandbox_client_writes(self, chat: str, text: str) -> None:
        """A client writes ``text`` in ``chat``."""
        await self.client_writes(chat, text)

    def sandbox_received(self, chat: str) -> list[str]:
        """The texts (and captions) the bot sent to ``chat``, oldest first."""
        return [message.text for message in self.sent_to(chat)]

    async def sandbox_client_gets(self, chat: str) -> None:
        """The client's device gets what the bot sent to ``chat``: each message not yet delivered is
        reported delivered."""
        for message in self.sent_to(chat):
            if message.status == "sent":
                await self.deliver_status(chat, message.message_id, "delivered")

    async def sandbox_client_reads(self, chat: str) -> None:
        """The client's device gets and opens what the bot sent to ``chat``: each message not yet
        read is reported delivered (unless it was), then read."""
        for message in self.sent_to(chat):
            if message.status == "sent":
                await self.deliver_status(chat, message.message_id, "delivered")
            if message.status != "read":
                await self.deliver_status(chat, message.message_id, "read")

    def sent_to(self, chat: str) -> list[BotMessage]:
        """What the bot sent to ``chat``, in order."""
        user = self._world.users.get(chat)
        return [m for m in user.messages if m.from_bot] if user is not None else []

    # -- the conformance driver (amoconnect.testing.fakes.ConformanceMessenger) -------------------------

    def received(self, chat: str) -> list[ReceivedMessage]:
        """What the bot sent to ``chat``, oldest first, in the conformance suite's terms."""
        return [_received(message) for message in self.sent_to(chat)]

    def received_reactions(self, chat: str) -> list[ReceivedReaction]:
        """The reactions the bot set (or, with an empty emoji, removed) in ``chat``, in order."""
        return [ReceivedReaction(r.message_id, r.emoji) for r in self.reactions if r.chat == chat]

    def received_typing(self, chat: str) -> int:
        """How many times the bot showed typing in ``chat``."""
        return sum(1 for event in self.typing_events if event.chat == chat)

    def received_comment_replies(self, post_id: str) -> list[str]:
        """The texts the bot answered in public under post ``post_id``, in order."""
        return [answer.text for answer in self.comment_answers if answer.post_id == post_id]

    def messages(self, chat: str) -> list[BotMessage]:
        """Every message of ``chat`` (the client's and the bot's), in order."""
        user = self._world.users.get(chat)
        return list(user.messages) if user is not None else []

    def message(self, chat: str, message_id: str) -> BotMessage:
        """One message of ``chat`` by id."""
        found = self._world.message_in(self._world.known(chat), message_id)
        if found is None:
            raise LookupError(f"fakechat chat {chat!r} has no message {message_id!r}")
        return found

    @property
    def last_update(self) -> dict[str, Any]:
        """The last update created."""
        if not self.updates:
            raise LookupError("fakechat has created no update yet")
        return self.updates[-1]

    # -- client side -----------------------------------------------------------------------------------

    async def client_writes(
        self,
        chat: str,
        text: str = "",
        *,
        name: str | None = None,
        username: str | None = None,
        media: ClientMedia | None = None,
        reply_to: str | None = None,
        location: tuple[float, float] | None = None,
        contact: tuple[str, str] | None = None,
    ) -> int | None:
        """The client of ``chat`` (created on first use) sends a message; returns the delivery's status.

        ``location`` is ``(lat, lon)``, ``contact`` is ``(name, phone)``; ``reply_to`` quotes a
        message of the chat. The status is ``None`` when no attempt got an answer.
        """
        user = self._world.user(chat, name=name, username=username)
        if reply_to is not None and self._world.message_in(user, reply_to) is None:
            raise LookupError(f"fakechat chat {chat!r} has no message {reply_to!r} to reply to")
        message = BotMessage(
            message_id=self._world.next_id(),
            chat=chat,
            from_bot=False,
            date=int(self.clock()),
            text=text,
            reply_to=reply_to,
        )
        content = self._world.content(user, message, media, location, contact)
        user.messages.append(message)
        return await self._deliver("message", content)

    async def business_writes(self, chat: str, text: str, *, reply_to: str | None = None) -> int | None:
        """The business answers the client of ``chat`` from fakechat's own app: a ``business_message``
        update (fakechat reports what its app sends; the bot's own API sends make none)."""
        user = self._world.known(chat)
        if reply_to is not None and self._world.message_in(user, reply_to) is None:
            raise LookupError(f"fakechat chat {chat!r} has no message {reply_to!r} to reply to")
        message = BotMessage(
            message_id=self._world.next_id(), chat=chat, from_bot=True, date=int(self.clock()), text=text
        )
        user.messages.append(message)
        content: dict[str, Any] = {
            "message_id": message.message_id,
            "chat": {"id": chat},
            "from": {"id": "owner", "name": "The owner"},
            "to": user.as_from(),
            "date": message.date,
            "text": text,
        }
        if reply_to is not None:
            content["reply_to"] = reply_to
        return await self._deliver("business_message", content)

    async def client_edits(
        self,
        chat: str,
        message_id: str,
        text: str = "",
        *,
        media: ClientMedia | None = None,
        location: tuple[float, float] | None = None,
        contact: tuple[str, str] | None = None,
    ) -> int | None:
        """The client edits one of its messages to new content; returns the delivery's status."""
        message = self.message(chat, message_id)
        if message.from_bot:
            raise LookupError(f"message {message_id!r} of chat {chat!r} is the bot's: a client edits its own")
        message.text = text
        content = self._world.content(self._world.known(chat), message, media, location, contact)
        content["edit_date"] = int(self.clock())
        return await self._deliver("edited_message", content)

    async def client_presses(self, chat: str, callback_data: str) -> int | None:
        """The client presses the newest button (or picks the list row) with ``callback_data``."""
        user = self._world.known(chat)
        for message in reversed(user.messages):
            if not message.from_bot:
                continue
            labels = {b["callback_data"]: b["text"] for row in message.buttons for b in row if "callback_data" in b}
            for section in (message.list_menu or {}).get("sections", []):
                labels.update({row["callback_data"]: row["title"] for row in section["rows"]})
            if callback_data in labels:
                press = {
                    "id": f"cb{self._world.next_id()}",
                    "chat": {"id": chat},
                    "from": user.as_from(),
                    "message_id": message.message_id,
                    "callback_data": callback_data,
                    "text": labels[callback_data],
                    "date": int(self.clock()),
                }
                return await self._deliver("callback", press)
        raise LookupError(f"the bot sent chat {chat!r} no button or list row with callback_data {callback_data!r}")

    async def client_reacts(self, chat: str, message_id: str, emoji: str, removed: bool = False) -> int | None:
        """The client sets (or, ``removed``, takes back) a reaction on a message of the chat."""
        user = self._world.known(chat)
        self.message(chat, message_id)
        if emoji and emoji not in REACTIONS:
            raise ValueError(f"fakechat offers only the reactions {' '.join(REACTIONS)}, not {emoji!r}")
        reaction = {
            "chat": {"id": chat},
            "from": user.as_from(),
            "message_id": message_id,
            "emoji": emoji,
            "removed": removed,
            "date": int(self.clock()),
        }
        return await self._deliver("reaction", reaction)

    async def client_types(self, chat: str) -> int | None:
        """The client starts typing."""
        user = self._world.known(chat)
        return await self._deliver("typing", {"chat": {"id": chat}, "from": user.as_from(), "date": int(self.clock())})

    async def client_comments(
        self,
        chat: str,
        post_id: str,
        text: str,
        *,
        parent_id: str | None = None,
        name: str | None = None,
    ) -> int | None:
        """The client of ``chat`` comments on post ``post_id`` (published on first use); see :attr:`last_update`."""
        user = self._world.user(chat, name=name)
        if post_id not in self._world.posts:
            self.add_post(post_id)
        post = self._world.posts[post_id]
        if parent_id is not None and parent_id not in post.comments:
            raise LookupError(f"post {post_id!r} has no comment {parent_id!r}")
        comment_id = f"cm{self._world.next_id()}"
        post.comments.add(comment_id)
        comment: dict[str, Any] = {
            "post": {"id": post.id, "url": post.url, "caption": post.caption},
            "comment_id": comment_id,
            "chat": {"id": chat},
            "from": user.as_from(),
            "text": text,
            "date": int(self.clock()),
        }
        if parent_id is not None:
            comment["parent_id"] = parent_id
        return await self._deliver("comment", comment)

    async def deliver_status(
        self,
        chat: str,
        message_id: str,
        status: Literal["delivered", "read", "failed"],
        *,
        error: str | None = None,
        error_code: int = 400,
    ) -> int | None:
        """Report that a message the bot sent was delivered, read or failed (``error`` says why)."""
        message = self.message(chat, message_id)
        if not message.from_bot:
            raise LookupError(f"message {message_id!r} of chat {chat!r} is the client's: statuses are of the bot's")
        message.status = status
        report: dict[str, Any] = {"chat": {"id": chat}, "message_id": message_id, "status": status}
        report["date"] = int(self.clock())
        if status == "failed":
            report["error"] = {"code": error_code, "description": error or "message could not be delivered"}
        return await self._deliver("status", report)

    # -- delivery ---------------------------------------------------------------------------------------

    async def _deliver(self, kind: str, payload: dict[str, Any]) -> int | None:
        async with self._delivery_lock:
            url = self.webhook_url
            if url is None:
                raise RuntimeError("fakechat has no webhook: the bot must call setWebhook first (or use set_webhook)")
            update_id = next(self._update_ids)
            update = {"update_id": update_id, kind: payload}
            self.updates.append(update)
            body = msgspec.json.encode(update)
            headers = {"Content-Type": "application/json"}
            if self.webhook_secret:
                headers[SIGNATURE_HEADER] = signature_of(body, self.webhook_secret)
            times, self._duplicate = (2 if self._duplicate else 1), False
            status: int | None = None
            for _ in range(times):
                status = await self._post(update_id, url, body, headers)
            return status

    async def _post(self, update_id: int, url: str, body: bytes, headers: dict[str, str]) -> int | None:
        delay = self.delivery_backoff
        status: int | None = None
        for attempt in range(1, self.delivery_attempts + 1):
            try:
                if self.http is None:
                    async with httpx.AsyncClient() as client:
                        response = await client.post(url, content=body, headers=headers, timeout=10.0)
                else:
                    response = await self.http.post(url, content=body, headers=headers, timeout=10.0)
                status = response.status_code
            except httpx.TransportError:
                status = None
            self.deliveries.append(Delivery(update_id, attempt, url, body, dict(headers), status))
            if status is not None and 200 <= status < 300:
                break
            if attempt < self.delivery_attempts:
                await anyio.sleep(delay)
                delay *= 2
        return status


if TYPE_CHECKING:  # mypy checks that FakeChat is a complete conformance driver

    def _as_driver(fake: FakeChat) -> ConformanceMessenger:
        return fake
