"""A faithful fake of the Telegram Bot API, in-process, for tests, the sandbox and plugin authors.

:class:`FakeTelegram` is an ASGI app (the object itself) serving one bot's Bot API at
``/bot{token}/{method}`` and its files at ``/file/bot{token}/{file_path}``, with an in-memory
world and a scriptable client side::

    fake = FakeTelegram(http=connector_client)            # http delivers webhook updates
    bot = httpx.AsyncClient(transport=httpx.ASGITransport(app=fake), base_url="http://telegram.test")
    await bot.post(f"/bot{fake.token}/setWebhook", json={"url": "http://connector/hooks/telegram/main", ...})
    chat = fake.add_client(first_name="Anna")
    await fake.client_writes(chat, "Hello")               # an update, delivered with the secret header
    fake.sent_to(chat)                                    # what the bot sent there

What it does as Telegram does:

- the envelope ``{"ok": true, "result": ...}`` / ``{"ok": false, "error_code", "description",
  "parameters"?}`` with the HTTP status equal to ``error_code``; the token in the path
  (401 ``Unauthorized``); method names case-insensitive; parameters from the query string and a
  JSON, urlencoded or multipart body, nested objects in form bodies as JSON strings;
- what we send is checked: ``Bad Request: chat not found``, ``Forbidden: bot was blocked by the
  user``, ``message text is empty``, ``message is too long`` (over 4,096 UTF-16 units),
  ``message caption is too long`` (1,024), ``message to be replied not found``, inline keyboards
  (``BUTTON_DATA_INVALID`` for callback data outside 1-64 bytes, ``BUTTON_URL_INVALID``, a button
  without an action), ``REACTION_INVALID`` outside the fixed emoji list, ``REACTIONS_TOO_MANY``,
  ``wrong parameter action in request``, ``secret token contains unallowed characters``;
- media as an upload, a known ``file_id`` or an HTTP URL fetched through ``fetch_http``
  (``failed to get HTTP URL content`` when that fails, ``wrong type of the web page content`` for
  a photo that is not an image, ``wrong file identifier/HTTP URL specified`` for anything else);
- ``setWebhook`` / ``deleteWebhook`` / ``getWebhookInfo``; updates POSTed to the webhook one at a
  time with ``X-Telegram-Bot-Api-Secret-Token``, retried on a non-2xx answer, kept pending when
  every attempt failed; ``getUpdates`` with offsets (a higher offset confirms), long polling,
  ``409 Conflict`` while a webhook is set or when a newer ``getUpdates`` takes over;
- ``allowed_updates``: an update of a kind not asked for is never created (``message_reaction``
  must be asked for explicitly);
- ``getFile`` and the download endpoint; ``answerCallbackQuery`` once per press;
- 429 ``Too Many Requests: retry after N`` with ``parameters.retry_after`` on demand (:meth:`~FakeTelegram.fail_next`).

Stricter than Telegram, to catch our own typos: an unknown parameter is refused with 400.
Webhook URLs may be plain ``http://`` unless ``require_https`` is set. The world holds private
chats only (:meth:`~FakeTelegram.add_client`); texts are measured in UTF-16 code units.
"""

from __future__ import annotations

import copy
import itertools
import json
import mimetypes
import time
from collections.abc import Callable
from typing import Any, Final

import anyio
import httpx
import msgspec
from amoconnect.signing import same_secret
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from ._fakeparts import (
    ALL_KINDS,
    CHAT_ACTIONS,
    DEFAULT_ALLOWED,
    DESCRIPTIONS,
    MEDIA_FIELDS,
    MEDIA_METHODS,
    MIME,
    POLL_TERMINATED,
    WEBHOOK_ACTIVE,
    AnswerCallbackParams,
    ApiCall,
    ApiError,
    BotReaction,
    ChatAction,
    ChatActionParams,
    Client,
    DeleteWebhookParams,
    Delivery,
    Fault,
    FileStore,
    GetFileParams,
    GetUpdatesParams,
    NoParams,
    Params,
    SendMediaParams,
    SendMessageParams,
    SentMessage,
    SetReactionParams,
    SetWebhookParams,
    StoredFile,
    check_markup,
    envelope_error,
    fail,
    media_object,
    quoted,
    read_params,
    reply_to,
)
from .botapi import (
    DOWNLOAD_LIMIT,
    MAX_CALLBACK_ANSWER_LENGTH,
    MAX_CAPTION_LENGTH,
    MAX_TEXT_LENGTH,
    REACTION_EMOJI,
    SECRET_TOKEN_HEADER,
    SECRET_TOKEN_PATTERN,
    utf16_length,
)

__all__ = [
    "CHAT_ACTIONS",
    "DEFAULT_TOKEN",
    "ApiCall",
    "BotReaction",
    "ChatAction",
    "Delivery",
    "FakeTelegram",
    "SentMessage",
]

DEFAULT_TOKEN: Final = "123456789:sandbox-token"
"""The bot token of a :class:`FakeTelegram` built without one (the sandbox's)."""

# -- the fake -------------------------------------------------------------------------------------


class FakeTelegram:
    """One bot's Bot API and the Telegram world around it; the object is the ASGI app.

    ``http`` POSTs webhook updates (a fresh client per delivery when ``None``); ``fetch_http``
    downloads the media URLs the bot sends (without one, every URL fails to fetch, as a private
    address would); a delivery is tried ``delivery_attempts`` times, ``delivery_backoff`` seconds
    apart, doubling; ``clock`` gives unix seconds.
    """

    def __init__(
        self,
        token: str = DEFAULT_TOKEN,
        *,
        http: httpx.AsyncClient | None = None,
        fetch_http: httpx.AsyncClient | None = None,
        bot_username: str = "amoconnect_test_bot",
        require_https: bool = False,
        delivery_attempts: int = 3,
        delivery_backoff: float = 0.05,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.token = token
        self.http = http
        self.fetch_http = fetch_http
        self.require_https = require_https
        self.delivery_attempts = delivery_attempts
        self.delivery_backoff = delivery_backoff
        self.clock = clock
        self.bot: dict[str, Any] = {
            "id": int(token.split(":", 1)[0]),
            "is_bot": True,
            "first_name": "amoconnect test bot",
            "username": bot_username,
        }
        self.webhook_url = ""
        """The webhook set with ``setWebhook`` (empty: none)."""
        self.webhook_secret: str | None = None
        self.allowed_updates: frozenset[str] = DEFAULT_ALLOWED
        """Update kinds created; ``setWebhook`` and ``getUpdates`` change it."""
        self.updates: list[dict[str, Any]] = []
        """Every update created, in order."""
        self.pending: list[dict[str, Any]] = []
        """Updates not yet delivered (webhook) or confirmed (``getUpdates``)."""
        self.deliveries: list[Delivery] = []
        self.calls: list[ApiCall] = []
        """Every Bot API request, in order."""
        self.sent: list[SentMessage] = []
        """Every message the bot sent, in order."""
        self.reactions: list[BotReaction] = []
        self.chat_actions: list[ChatAction] = []
        self.answered_callbacks: list[str] = []
        self.callback_answers: dict[str, str] = {}
        """The text each press was answered with, when it had one."""
        self.last_error_message: str | None = None
        self._clients: dict[int, Client] = {}
        self._files = FileStore()
        self._callbacks: dict[str, bool] = {}
        self._faults: list[Fault] = []
        self._update_ids = itertools.count(1)
        self._chat_ids = itertools.count(100001)
        self._query_ids = itertools.count(1)
        self._duplicate = False
        self._delivery_lock: anyio.Lock | None = None
        self._new_update: anyio.Event | None = None
        self._poll_generation = 0
        self._sandbox_chats: dict[str, int] = {}
        self._app = Starlette(
            routes=[
                Route("/bot{token}/{method}", self._api, methods=["GET", "POST"]),
                Route("/file/bot{token}/{file_path:path}", self._download, methods=["GET"]),
            ]
        )
        self._methods: dict[str, tuple[type[Params], Callable[[Any, dict[str, tuple[str, bytes]]], Any]]] = {
            "getme": (NoParams, self._get_me),
            "setwebhook": (SetWebhookParams, self._set_webhook),
            "deletewebhook": (DeleteWebhookParams, self._delete_webhook),
            "getwebhookinfo": (NoParams, self._webhook_info),
            "getupdates": (GetUpdatesParams, self._get_updates),
            "sendmessage": (SendMessageParams, self._send_message),
            **{name: (SendMediaParams, self._send_media) for name in MEDIA_FIELDS},
            "sendchataction": (ChatActionParams, self._send_chat_action),
            "setmessagereaction": (SetReactionParams, self._set_reaction),
            "answercallbackquery": (AnswerCallbackParams, self._answer_callback),
            "getfile": (GetFileParams, self._get_file),
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry."""
        await self._app(scope, receive, send)

    @property
    def app(self) -> FakeTelegram:
        """The ASGI app (the fake itself)."""
        return self

    def settings(self, api_url: str, **overrides: Any) -> dict[str, Any]:
        """Settings of a ``telegram`` source that talks to this fake at ``api_url``."""
        return {"token": self.token, "api_url": api_url, **overrides}

    # -- the sandbox (amoconnect.sandbox.SandboxMessenger) ----------------------------------------

    def sandbox_settings(self, api_url: str) -> dict[str, Any]:
        """Settings of the sandbox's bot: webhook mode, registered by the connector at startup."""
        return self.settings(api_url)

    def _sandbox_chat(self, chat: str) -> int:
        found = self._sandbox_chats.get(chat)
        if found is None:
            found = self._sandbox_chats[chat] = self.add_client(
                chat.replace("-", " ").title(), username=chat.replace("-", "_")
            )
        return found

    async def sandbox_client_writes(self, chat: str, text: str) -> None:
        """The client named ``chat`` writes ``text`` to the bot."""
        await self.client_writes(self._sandbox_chat(chat), text)

    def sandbox_received(self, chat: str) -> list[str]:
        """Texts (and captions) the bot sent to the client named ``chat``, oldest first."""
        return [m.text for m in self.sent_to(self._sandbox_chat(chat))]

    # -- HTTP -------------------------------------------------------------------------------------

    def _take_fault(self, method: str) -> Fault | None:
        for fault in self._faults:
            if fault.method in (None, method):
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self._faults.remove(fault)
                return fault
        return None

    async def _api(self, request: Request) -> Response:
        method = request.path_params["method"]
        params: dict[str, Any] = {}
        files: dict[str, tuple[str, bytes]] = {}
        try:
            params, files = await read_params(request)
            result = await self._answer(request.path_params["token"], method, params, files)
        except ApiError as exc:
            self.calls.append(ApiCall(method, params, files, exc.status))
            return envelope_error(exc.status, exc.description, exc.retry_after)
        self.calls.append(ApiCall(method, params, files, 200))
        return JSONResponse({"ok": True, "result": result})

    async def _answer(
        self, token: str, method: str, params: dict[str, Any], files: dict[str, tuple[str, bytes]]
    ) -> Any:
        fault = self._take_fault(method)
        if fault is not None:
            description = fault.description or DESCRIPTIONS.get(fault.status, "Internal Server Error")
            if fault.status == 429 and fault.description is None:
                description = f"Too Many Requests: retry after {fault.retry_after or 1}"
            raise ApiError(fault.status, description, fault.retry_after)
        if not same_secret(token, self.token):
            fail(401, "Unauthorized")
        entry = self._methods.get(method.lower())
        if entry is None:
            fail(404, "Not Found")
        kind, handler = entry
        try:
            typed = msgspec.convert(params, kind, strict=False)
        except msgspec.ValidationError as exc:
            fail(400, f"Bad Request: {exc}")
        result = handler(typed, files)
        if hasattr(result, "__await__"):
            result = await result
        return result

    async def _download(self, request: Request) -> Response:
        token = request.path_params["token"]
        stored = self._files.by_path.get(request.path_params["file_path"])
        if not same_secret(token, self.token) or stored is None:
            return envelope_error(404, "Not Found")
        return Response(stored.content, media_type="application/octet-stream")

    # -- bot side: helpers ------------------------------------------------------------------------

    def _chat(self, chat_id: int | str | None) -> Client:
        """The chat a send goes to: 400 when unknown, 403 when its client blocked or never started the bot."""
        if chat_id is None or chat_id == "":
            fail(400, "Bad Request: chat_id is empty")
        client: Client | None = None
        if isinstance(chat_id, int) or chat_id.lstrip("-").isdigit():
            client = self._clients.get(int(chat_id))
        else:
            client = next((c for c in self._clients.values() if "@" + c.user.get("username", "") == chat_id), None)
        if client is None:
            fail(400, "Bad Request: chat not found")
        if client.blocked:
            fail(403, "Forbidden: bot was blocked by the user")
        if not client.started:
            fail(403, "Forbidden: bot can't initiate conversation with a user")
        return client

    def _new_message(self, client: Client, sender: dict[str, Any], **content: Any) -> dict[str, Any]:
        if sender is client.user:
            client.started = True
        message = {
            "message_id": next(client.ids),
            "from": sender,
            "chat": client.chat_object(),
            "date": int(self.clock()),
            **content,
        }
        client.messages[message["message_id"]] = message
        return message

    async def _media_file(
        self, kind: str, value: str | None, files: dict[str, tuple[str, bytes]]
    ) -> tuple[StoredFile, str | None, str]:
        """The file a media parameter names: an upload, ``attach://``, a known ``file_id`` or a URL."""
        upload = files.get(kind)
        if value is not None and value.startswith("attach://"):
            upload = files.get(value.removeprefix("attach://"))
            if upload is None:
                fail(400, "Bad Request: wrong file identifier/HTTP URL specified")
        if upload is not None:
            name, content = upload
            mime = mimetypes.guess_type(name)[0] or MIME[kind]
            return self._files.add(kind, content, file_name=name, mime_type=mime), None, name
        if not value:
            fail(400, f"Bad Request: there is no {kind} in the request")
        known = self._files.by_id.get(value)
        if known is not None:
            return known, value, ""
        if not value.startswith(("http://", "https://")):
            fail(400, "Bad Request: wrong file identifier/HTTP URL specified")
        if self.fetch_http is None:
            fail(400, "Bad Request: failed to get HTTP URL content")
        try:
            response = await self.fetch_http.get(value, timeout=10.0)
        except httpx.HTTPError:
            fail(400, "Bad Request: failed to get HTTP URL content")
        if response.status_code != 200:
            fail(400, "Bad Request: failed to get HTTP URL content")
        mime = response.headers.get("content-type", "").split(";")[0].strip()
        if kind == "photo" and not mime.startswith("image/"):
            fail(400, "Bad Request: wrong type of the web page content")
        name = httpx.URL(value).path.rsplit("/", 1)[-1]
        return self._files.add(kind, response.content, file_name=name, mime_type=mime), value, name

    def _record(self, client: Client, method: str, kind: str, message: dict[str, Any], **fields: Any) -> None:
        self.sent.append(
            SentMessage(
                message_id=message["message_id"],
                chat=client.chat,
                method=method,
                kind=kind,
                reply_markup=message.get("reply_markup"),
                reply_to=(message.get("reply_to_message") or {}).get("message_id"),
                result=message,
                **fields,
            )
        )

    # -- bot side: methods ------------------------------------------------------------------------

    def _get_me(self, params: NoParams, files: Any) -> dict[str, Any]:
        return {
            **self.bot,
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
        }

    def _set_webhook(self, params: SetWebhookParams, files: Any) -> bool:
        if params.secret_token is not None and not SECRET_TOKEN_PATTERN.match(params.secret_token):
            fail(400, "Bad Request: secret token contains unallowed characters")
        if params.url and self.require_https and not params.url.startswith("https://"):
            fail(400, "Bad Request: bad webhook: An HTTPS URL must be provided for webhook")
        if params.url and not params.url.startswith(("http://", "https://")):
            fail(400, "Bad Request: bad webhook: Failed to resolve host: Name or service not known")
        self._allow(params.allowed_updates)
        if params.drop_pending_updates:
            self.pending.clear()
        self.webhook_url = params.url
        self.webhook_secret = params.secret_token if params.url else None
        if params.url:
            self._supersede_pollers()
        return True

    def _delete_webhook(self, params: DeleteWebhookParams, files: Any) -> bool:
        if params.drop_pending_updates:
            self.pending.clear()
        self.webhook_url = ""
        self.webhook_secret = None
        return True

    def _webhook_info(self, params: NoParams, files: Any) -> dict[str, Any]:
        info: dict[str, Any] = {
            "url": self.webhook_url,
            "has_custom_certificate": False,
            "pending_update_count": len(self.pending),
        }
        if self.webhook_url:
            info["max_connections"] = 40
            info["allowed_updates"] = sorted(self.allowed_updates)
        if self.last_error_message is not None:
            info["last_error_date"] = int(self.clock())
            info["last_error_message"] = self.last_error_message
        return info

    def _allow(self, kinds: list[str] | None) -> None:
        if kinds is None:
            return
        self.allowed_updates = frozenset(kinds) & ALL_KINDS if kinds else DEFAULT_ALLOWED

    async def _get_updates(self, params: GetUpdatesParams, files: Any) -> list[dict[str, Any]]:
        if self.webhook_url:
            fail(409, WEBHOOK_ACTIVE)
        self._allow(params.allowed_updates)
        if params.offset > 0:
            self.pending = [u for u in self.pending if u["update_id"] >= params.offset]
        elif params.offset < 0:
            self.pending = self.pending[params.offset :]
        self._supersede_pollers()
        generation = self._poll_generation
        with anyio.move_on_after(max(params.timeout, 0)):
            while not self.pending and generation == self._poll_generation:
                self._new_update = event = self._new_update or anyio.Event()
                await event.wait()
        if generation != self._poll_generation:
            fail(409, WEBHOOK_ACTIVE if self.webhook_url else POLL_TERMINATED)
        return self.pending[: max(1, min(params.limit, 100))]

    def _wake_pollers(self) -> None:
        if self._new_update is not None:
            self._new_update.set()
            self._new_update = None

    def _supersede_pollers(self) -> None:
        """A newer getUpdates (or a webhook) ends the waiting ones with 409."""
        self._poll_generation += 1
        self._wake_pollers()

    def _check_text(self, text: str, *, caption: bool) -> None:
        limit = MAX_CAPTION_LENGTH if caption else MAX_TEXT_LENGTH
        if utf16_length(text) > limit:
            fail(400, "Bad Request: message caption is too long" if caption else "Bad Request: message is too long")

    def _send_message(self, params: SendMessageParams, files: Any) -> dict[str, Any]:
        client = self._chat(params.chat_id)
        if not params.text.strip():
            fail(400, "Bad Request: message text is empty")
        self._check_text(params.text, caption=False)
        extra = {**reply_to(client, params.reply_parameters), **check_markup(params.reply_markup)}
        message = self._new_message(client, self.bot, text=params.text, **extra)
        self._record(client, "sendMessage", "text", message, text=params.text)
        return message

    async def _send_media(self, params: SendMediaParams, files: dict[str, tuple[str, bytes]]) -> dict[str, Any]:
        kinds = [name for name in MEDIA_FIELDS.values() if getattr(params, name) is not None or name in files]
        if len(kinds) != 1:
            fail(400, "Bad Request: there is no media in the request")
        kind = kinds[0]
        method = MEDIA_METHODS[kind]
        client = self._chat(params.chat_id)
        caption = params.caption or ""
        if kind == "sticker" and caption:
            fail(400, "Bad Request: stickers can't have a caption")
        self._check_text(caption, caption=True)
        extra = {**reply_to(client, params.reply_parameters), **check_markup(params.reply_markup)}
        stored, given, name = await self._media_file(kind, getattr(params, kind), files)
        content = {kind: media_object(kind, stored, name, duration=params.duration or 3)}
        if caption:
            content["caption"] = caption
        message = self._new_message(client, self.bot, **content, **extra)
        self._record(client, method, kind, message, text=caption, media=given, content=stored.content, file_name=name)
        return message

    def _send_chat_action(self, params: ChatActionParams, files: Any) -> bool:
        client = self._chat(params.chat_id)
        if params.action not in CHAT_ACTIONS:
            fail(400, "Bad Request: wrong parameter action in request")
        self.chat_actions.append(ChatAction(client.chat, params.action, self.clock()))
        return True

    def _set_reaction(self, params: SetReactionParams, files: Any) -> bool:
        client = self._chat(params.chat_id)
        if params.message_id not in client.messages:
            fail(400, "Bad Request: MESSAGE_ID_INVALID")
        emoji: list[str] = []
        for reaction in params.reaction:
            if reaction.get("type") != "emoji" or reaction.get("emoji") not in REACTION_EMOJI:
                fail(400, "Bad Request: REACTION_INVALID")
            emoji.append(reaction["emoji"])
        if len(emoji) > 1:
            fail(400, "Bad Request: REACTIONS_TOO_MANY")
        self.reactions.append(BotReaction(client.chat, params.message_id, tuple(emoji)))
        return True

    def _answer_callback(self, params: AnswerCallbackParams, files: Any) -> bool:
        if self._callbacks.get(params.callback_query_id) is not False:
            fail(400, "Bad Request: query is too old and response timeout expired or query ID is invalid")
        if params.text is not None and len(params.text) > MAX_CALLBACK_ANSWER_LENGTH:
            fail(400, "Bad Request: MESSAGE_TOO_LONG")
        self._callbacks[params.callback_query_id] = True
        self.answered_callbacks.append(params.callback_query_id)
        if params.text:
            self.callback_answers[params.callback_query_id] = params.text
        return True

    def _get_file(self, params: GetFileParams, files: Any) -> dict[str, Any]:
        stored = self._files.by_id.get(params.file_id)
        if stored is None:
            fail(400, "Bad Request: invalid file_id")
        if len(stored.content) > DOWNLOAD_LIMIT:
            fail(400, "Bad Request: file is too big")
        return {
            "file_id": stored.file_id,
            "file_unique_id": stored.unique_id,
            "file_size": len(stored.content),
            "file_path": stored.path,
        }

    # -- world and inspection ---------------------------------------------------------------------

    def add_client(
        self,
        first_name: str = "Client",
        *,
        last_name: str | None = None,
        username: str | None = None,
        language_code: str | None = "en",
        chat: int | None = None,
        started: bool = True,
    ) -> int:
        """A Telegram user who has started the bot; returns the private chat's id (the user's id).

        ``started=False``: a user who never wrote to the bot; sends to them are refused (403) until they write.
        """
        chat = chat if chat is not None else next(self._chat_ids)
        user: dict[str, Any] = {"id": chat, "is_bot": False, "first_name": first_name}
        for key, value in (("last_name", last_name), ("username", username), ("language_code", language_code)):
            if value is not None:
                user[key] = value
        self._clients[chat] = Client(chat=chat, user=user, started=started)
        return chat

    def _client(self, chat: int) -> Client:
        client = self._clients.get(chat)
        if client is None:
            raise LookupError(f"no Telegram client with chat {chat}; call add_client() first")
        return client

    def fail_next(
        self,
        n: int,
        status: int,
        retry_after: int | None = None,
        *,
        method: str | None = None,
        description: str | None = None,
    ) -> None:
        """Answer the next ``n`` Bot API requests (of ``method`` only, if given) with ``status``.

        A 429 says ``Too Many Requests: retry after N`` and carries ``parameters.retry_after``.
        """
        self._faults.append(
            Fault(remaining=n, status=status, retry_after=retry_after, method=method, description=description)
        )

    def duplicate_next(self) -> None:
        """Deliver the next update twice to the webhook, as Telegram sometimes does."""
        self._duplicate = True

    def sent_to(self, chat: int) -> list[SentMessage]:
        """What the bot sent to ``chat``, in order."""
        return [m for m in self.sent if m.chat == chat]

    def calls_to(self, method: str) -> list[ApiCall]:
        """Requests of one Bot API method (case-insensitive), in order."""
        return [c for c in self.calls if c.method.lower() == method.lower()]

    def message(self, chat: int, message_id: int) -> dict[str, Any]:
        """A message of ``chat`` (the client's or the bot's) as Telegram has it."""
        return self._client(chat).messages[message_id]

    # -- client side ------------------------------------------------------------------------------

    async def client_writes(
        self, chat: int, text: str, *, reply_to: int | None = None, forwarded: bool = False
    ) -> dict[str, Any] | None:
        """The client sends a text (quoting message ``reply_to``; ``forwarded`` from a hidden user)."""
        client = self._client(chat)
        content: dict[str, Any] = {"text": text}
        if reply_to is not None:
            content["reply_to_message"] = quoted(client.messages[reply_to])
        if forwarded:
            content["forward_origin"] = {
                "type": "hidden_user",
                "sender_user_name": "Someone",
                "date": int(self.clock()),
            }
        return await self._emit("message", self._new_message(client, client.user, **content))

    async def client_sends(
        self,
        chat: int,
        kind: str,
        content: bytes = b"\x89PNG fake media",
        *,
        caption: str = "",
        file_name: str = "",
        mime_type: str = "",
        duration: int = 3,
    ) -> dict[str, Any] | None:
        """The client sends media: ``photo``, ``document``, ``video``, ``animation``, ``voice``, ``audio``,
        ``video_note`` or ``sticker`` (a ``document`` is also given for an ``animation``, as Telegram does)."""
        if kind not in MIME:
            raise ValueError(f"unknown media kind {kind!r}; one of {sorted(MIME)}")
        client = self._client(chat)
        stored = self._files.add(kind, content, file_name=file_name, mime_type=mime_type)
        fields: dict[str, Any] = {kind: media_object(kind, stored, file_name, duration)}
        if kind == "sticker":
            fields[kind]["emoji"] = "😀"
        if kind == "animation":
            fields["document"] = media_object("document", stored, file_name)
        if caption:
            fields["caption"] = caption
        return await self._emit("message", self._new_message(client, client.user, **fields))

    async def client_sends_location(self, chat: int, latitude: float, longitude: float) -> dict[str, Any] | None:
        """The client shares a point on the map."""
        client = self._client(chat)
        location = {"latitude": latitude, "longitude": longitude}
        return await self._emit("message", self._new_message(client, client.user, location=location))

    async def client_sends_venue(
        self, chat: int, latitude: float, longitude: float, title: str, address: str
    ) -> dict[str, Any] | None:
        """The client shares a place (a venue carries its location too)."""
        client = self._client(chat)
        location = {"latitude": latitude, "longitude": longitude}
        venue = {"location": location, "title": title, "address": address}
        return await self._emit("message", self._new_message(client, client.user, venue=venue, location=location))

    async def client_sends_contact(
        self, chat: int, phone_number: str, first_name: str, last_name: str | None = None
    ) -> dict[str, Any] | None:
        """The client shares a contact card."""
        client = self._client(chat)
        contact: dict[str, Any] = {"phone_number": phone_number, "first_name": first_name}
        if last_name is not None:
            contact["last_name"] = last_name
        return await self._emit("message", self._new_message(client, client.user, contact=contact))

    async def client_edits(self, chat: int, message_id: int, text: str) -> dict[str, Any] | None:
        """The client edits its text (or, for media, its caption)."""
        client = self._client(chat)
        message = client.messages[message_id]
        if message["from"].get("is_bot"):
            raise LookupError(f"message {message_id} of chat {chat} is the bot's; a client edits its own")
        message["text" if "text" in message else "caption"] = text
        message["edit_date"] = int(self.clock())
        return await self._emit("edited_message", dict(message))

    async def client_reacts(self, chat: int, message_id: int, *emoji: str) -> dict[str, Any] | None:
        """The client's reactions on a message become ``emoji`` (none: removed); ``None`` when not asked for."""
        client = self._client(chat)
        if message_id not in client.messages:
            raise LookupError(f"chat {chat} has no message {message_id}")
        if bad := [e for e in emoji if e not in REACTION_EMOJI]:
            raise ValueError(f"Telegram offers no reaction {bad[0]!r}")
        old = client.reactions.get(message_id, [])
        client.reactions[message_id] = list(emoji)
        update = {
            "chat": client.chat_object(),
            "message_id": message_id,
            "user": client.user,
            "date": int(self.clock()),
            "old_reaction": [{"type": "emoji", "emoji": e} for e in old],
            "new_reaction": [{"type": "emoji", "emoji": e} for e in emoji],
        }
        return await self._emit("message_reaction", update)

    async def client_presses(self, chat: int, message_id: int, callback_data: str) -> dict[str, Any] | None:
        """The client presses the button with ``callback_data`` under the bot's message ``message_id``."""
        client = self._client(chat)
        message = client.messages.get(message_id)
        rows = (message or {}).get("reply_markup", {}).get("inline_keyboard", [])
        if not any(button.get("callback_data") == callback_data for row in rows for button in row):
            raise LookupError(f"message {message_id} of chat {chat} has no button with callback_data {callback_data!r}")
        assert message is not None
        query_id = f"{chat}{next(self._query_ids):08d}"
        self._callbacks[query_id] = False
        query = {
            "id": query_id,
            "from": client.user,
            "message": message,
            "chat_instance": f"-{chat}77",
            "data": callback_data,
        }
        return await self._emit("callback_query", query)

    async def _member_update(self, client: Client, old: str, new: str) -> dict[str, Any] | None:
        def member(status: str) -> dict[str, Any]:
            found: dict[str, Any] = {"status": status, "user": self.bot}
            if status == "kicked":
                found["until_date"] = 0
            return found

        update = {
            "chat": client.chat_object(),
            "from": client.user,
            "date": int(self.clock()),
            "old_chat_member": member(old),
            "new_chat_member": member(new),
        }
        return await self._emit("my_chat_member", update)

    async def client_blocks(self, chat: int) -> dict[str, Any] | None:
        """The client blocks the bot: a ``my_chat_member`` update, and 403 for every send afterwards."""
        client = self._client(chat)
        client.blocked = True
        return await self._member_update(client, "member", "kicked")

    async def client_unblocks(self, chat: int) -> dict[str, Any] | None:
        """The client unblocks (restarts) the bot."""
        client = self._client(chat)
        client.blocked = False
        return await self._member_update(client, "kicked", "member")

    # -- updates ----------------------------------------------------------------------------------

    async def _emit(self, kind: str, payload: dict[str, Any]) -> dict[str, Any] | None:
        if kind not in self.allowed_updates:
            return None
        update = {"update_id": next(self._update_ids), kind: copy.deepcopy(payload)}
        self.updates.append(update)
        self.pending.append(update)
        self._wake_pollers()
        if self.webhook_url:
            await self.deliver_pending()
        return update

    async def deliver_pending(self) -> None:
        """POST every pending update to the webhook, in order; stop at the first that fails every attempt."""
        self._delivery_lock = self._delivery_lock or anyio.Lock()
        async with self._delivery_lock:
            while self.pending and self.webhook_url:
                update = self.pending[0]
                times, self._duplicate = (2 if self._duplicate else 1), False
                ok = False
                for _ in range(times):
                    ok = await self._post(update)
                if not ok:
                    return
                self.pending.pop(0)

    async def _post(self, update: dict[str, Any]) -> bool:
        body = json.dumps(update, ensure_ascii=False).encode()
        headers = {"Content-Type": "application/json"}
        if self.webhook_secret:
            headers[SECRET_TOKEN_HEADER] = self.webhook_secret
        delay = self.delivery_backoff
        for attempt in range(1, self.delivery_attempts + 1):
            status: int | None = None
            try:
                if self.http is None:
                    async with httpx.AsyncClient() as client:
                        response = await client.post(self.webhook_url, content=body, headers=headers, timeout=10.0)
                else:
                    response = await self.http.post(self.webhook_url, content=body, headers=headers, timeout=10.0)
                status = response.status_code
            except httpx.TransportError as exc:
                self.last_error_message = f"Connection failed: {type(exc).__name__}"
            self.deliveries.append(Delivery(update["update_id"], attempt, self.webhook_url, body, headers, status))
            if status is not None and 200 <= status < 300:
                return True
            if status is not None:
                self.last_error_message = f"Wrong response from the webhook: {status}"
            if attempt < self.delivery_attempts:
                await anyio.sleep(delay)
                delay *= 2
        return False
