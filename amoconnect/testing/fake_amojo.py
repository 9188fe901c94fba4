"""An in-process fake of the amoCRM Chats API (amojo) for tests, plugin authors and a sandbox.

:class:`FakeAmojo` serves every method of spec §4 at its real path as a Starlette ASGI app,
checks every request the way amojo does, keeps inspectable records, injects faults, and emits
correctly signed v2 webhooks as a manager would cause them::

    fake = FakeAmojo(CHANNEL_ID, SECRET, webhook_url="http://runtime.test/amocrm/:scope_id")
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=fake.app), base_url="http://amojo.test")

Refusals, all with a JSON body ``{"error": <what is wrong>, "code": <code>}``:

- 403 ``bad_signature``: ``X-Signature`` missing or wrong, ``Content-MD5`` not the MD5 of the body,
  ``Date`` missing, unparseable or more than 15 minutes away from the fake's clock. The signature
  is recomputed over METHOD, Content-MD5, Content-Type, Date and the path exactly as the request
  line carried it (percent-encoding and all), without query string.
- 400 ``bad_content_type``: ``Content-Type`` is not ``application/json``.
- 400 ``invalid_json`` / ``invalid_body``: the body is not JSON, or does not fit the wire model
  (the message names the path, e.g. ``$.payload.sender``); ``invalid_message`` for a message
  missing what its type needs (text, media, file_name/file_size, location, contact).
- 400 ``duplicate_msgid``: a ``new_message`` whose msgid was already used in that scope::

      {"error": "message with msgid 'X' already exists", "code": "duplicate_msgid", "msgid": "X"}

- 400 ``bad_history_range``: ``offset``/``limit`` not integers, negative, or ``limit`` > 50.
- 204 (no body) from history for a path that names no chat: the history path takes amoCRM's chat
  id only, so the integration's own conversation_id there finds nothing, as on amoCRM.
- 404 ``unknown_channel``, ``unknown_scope`` (never connected or disconnected: :meth:`FakeAmojo.disconnect`;
  a disconnected scope is sent no hooks either),
  ``unknown_message``, ``unknown_chat``; 405 ``method_not_allowed`` (e.g. POST to disconnect).

Manager webhooks carry the empty values amoCRM fills unused fields with (``"media": ""``,
``"file_size": 0``), so receivers must treat empty as absent.
"""

from __future__ import annotations

import hashlib
import hmac
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime
from http import HTTPStatus
from typing import Any, Literal, NoReturn, TypeVar

import httpx
import msgspec
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..amojo import wire
from ..signing import CONTENT_TYPE, same_secret, signature_for

__all__ = [
    "MAX_HISTORY_LIMIT",
    "SIGNATURE_TTL",
    "Chat",
    "Connection",
    "EmitResult",
    "FakeAmojo",
    "ReactionRecord",
    "RequestRecord",
    "SentWebhook",
    "StoredMessage",
    "TypingRecord",
    "error_response",
]

SIGNATURE_TTL = 15 * 60
"""Seconds a request's ``Date`` stays acceptable (either way, to allow for clock skew)."""
MAX_HISTORY_LIMIT = 50
"""The largest ``limit`` the history method accepts."""

_M = TypeVar("_M")
_MEDIA_TYPES = frozenset({"file", "video", "picture", "voice", "audio", "sticker"})
_NAMED_FILE_TYPES = frozenset({"file", "video", "picture"})
_PREFIX = "/v2/origin/custom"
# amoCRM fills a hook's unused message fields with empty values rather than leaving them out.
_HOOK_EMPTY_FIELDS: dict[str, Any] = dict(text="", media="", thumbnail="", file_name="", file_size=0, tag="")


@dataclass
class Connection:
    """One account's connection of the channel (``scope_id`` = ``{channel_id}_{account_id}``)."""

    scope_id: str
    account_id: str
    hook_api_version: str = "v2"
    title: str | None = None
    is_time_window_disabled: bool | None = None
    webhook_url: str | None = None
    connected: bool = True


@dataclass
class Chat:
    """A chat as amoCRM keeps it: ``id`` is amoCRM's, ``conversation_id`` ours (None until tied)."""

    id: str
    scope_id: str
    conversation_id: str | None
    client_user_id: str
    client_id: str | None = None
    name: str | None = None
    avatar: str | None = None
    phone: str | None = None
    email: str | None = None
    source_external_id: str | None = None


@dataclass
class StoredMessage:
    """A message in a chat: sent by the integration (``payload``) or by a manager (``hook``)."""

    id: str
    scope_id: str
    chat_id: str
    conversation_id: str | None
    msgid: str | None
    from_manager: bool
    from_client: bool
    sender_id: str
    receiver_id: str | None
    content: wire.MessageContent | wire.HookMessageBody
    msec_timestamp: int
    silent: bool = False
    payload: wire.MessagePayload | None = None
    hook: wire.MessageHook | None = None
    edits: list[wire.MessagePayload] = field(default_factory=list)
    statuses: list[wire.DeliveryStatusRequest] = field(default_factory=list)

    @property
    def type(self) -> str:
        """The message type (``text``, ``picture``, ...)."""
        return self.content.type

    @property
    def text(self) -> str | None:
        """The text, edits applied; None when empty."""
        edited = [edit.message.text for edit in self.edits if edit.message.text]
        return edited[-1] if edited else self.content.text or None

    @property
    def delivery_status(self) -> int | None:
        """The last delivery status reported for this message, if any."""
        return self.statuses[-1].delivery_status if self.statuses else None


@dataclass
class ReactionRecord:
    """A reaction the integration sent (``message_id`` is amoCRM's id of the message)."""

    scope_id: str
    message_id: str
    request: wire.ReactRequest


@dataclass
class TypingRecord:
    """A typing notice the integration sent."""

    scope_id: str
    request: wire.TypingRequest
    at: float


@dataclass
class RequestRecord:
    """One request the fake received and the status it answered."""

    method: str
    path: str
    query: str
    status: int = 0
    body: bytes = b""


@dataclass
class SentWebhook:
    """One webhook the fake emitted; ``status`` is None when no answer came."""

    url: str
    body: bytes
    headers: dict[str, str]
    status: int | None


@dataclass
class EmitResult:
    """What an emitter did: the hook's answer status and the amoCRM ids it created."""

    status: int | None
    body: bytes
    message_id: str | None = None
    chat_id: str | None = None


@dataclass
class _Fault:
    status: int
    remaining: int
    path_contains: str | None
    headers: dict[str, str]
    body: dict[str, Any] | bytes
    acted: bool

    def response(self) -> Response:
        if isinstance(self.body, bytes):
            return Response(self.body, self.status, headers=self.headers)
        return JSONResponse(self.body, self.status, headers=self.headers)


class _Refused(Exception):
    def __init__(self, status: int, error: str, code: str, **extra: Any) -> None:
        super().__init__(error)
        self.status = status
        self.body = {"error": error, "code": code, **extra}


def _refuse(status: int, error: str, code: str, **extra: Any) -> NoReturn:
    raise _Refused(status, error, code, **extra)


_ERROR_CODES = {429: "too_many_requests", 500: "internal_error", 502: "bad_gateway", 503: "unavailable"}


def error_response(status: int, retry_after: float | None = None) -> Response:
    """An error answer in the fake's refusal shape ``{"error", "code"}``, with ``Retry-After`` when given.

    The answer a :class:`~amoconnect.testing.faultproxy.FaultProxy` in front of the fake injects.
    """
    headers = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else None
    phrase = HTTPStatus(status).phrase
    return JSONResponse({"error": phrase.lower(), "code": _ERROR_CODES.get(status, "error")}, status, headers=headers)


def _json(obj: msgspec.Struct, status: int = 200) -> Response:
    return Response(wire.encode(obj), status_code=status, media_type=CONTENT_TYPE)


def _sent_answer(message: StoredMessage, ref_id: str) -> Response:
    sent = wire.SentMessage(
        conversation_id=message.chat_id,
        sender_id=message.sender_id,
        receiver_id=message.receiver_id,
        msgid=message.id,
        ref_id=ref_id,
    )
    return _json(wire.SendMessageResponse(new_message=sent))


def _content_problem(message: wire.MessageContent) -> str | None:
    kind = message.type
    if kind == "text" and not message.text:
        return "message.text is required for type 'text'"
    if kind in _MEDIA_TYPES and not message.media:
        return f"message.media (a public URL) is required for type {kind!r}"
    if kind in _NAMED_FILE_TYPES and (not message.file_name or message.file_size is None):
        return f"message.file_name and message.file_size are required for type {kind!r}"
    if kind == "location" and message.location is None:
        return "message.location is required for type 'location'"
    if kind == "contact" and message.contact is None:
        return "message.contact is required for type 'contact'"
    return None


class FakeAmojo:
    """A faithful in-process amojo serving one channel; ``app`` is the ASGI app (the fake itself).

    ``clock`` returns unix seconds (default :func:`time.time`); ``webhook_url`` is the channel's
    webhook URL template (``:scope_id`` is substituted), overridable per scope with
    :meth:`set_webhook_url`; ``webhook_client`` sends the hooks (a fresh client when None);
    ``trailing_newline`` appends ``\\n`` to emitted hook bodies: signed like any byte, or with
    ``"unsigned"`` left out of the signature (both are accepted by other amojo clients).
    """

    def __init__(
        self,
        channel_id: str,
        secret: str,
        *,
        bot_id: str | None = None,
        clock: Callable[[], float] | None = None,
        webhook_url: str | None = None,
        webhook_client: httpx.AsyncClient | None = None,
        trailing_newline: bool | Literal["unsigned"] = False,
    ) -> None:
        self.channel_id = channel_id
        self.secret = secret
        self.bot_id = bot_id or str(uuid.uuid4())
        self.manager_id = str(uuid.uuid4())
        self.manager_name = "Manager"
        self.clock = clock or time.time
        self.webhook_url = webhook_url
        self.webhook_client = webhook_client
        self.trailing_newline = trailing_newline
        self.connections: dict[str, Connection] = {}
        self.chats: dict[str, Chat] = {}
        self.messages: list[StoredMessage] = []
        self.reactions: list[ReactionRecord] = []
        self.typing: list[TypingRecord] = []
        self.requests: list[RequestRecord] = []
        self.webhooks: list[SentWebhook] = []
        self._by_id: dict[str, StoredMessage] = {}
        self._by_msgid: dict[tuple[str, str], StoredMessage] = {}
        self._faults: list[_Fault] = []
        self.app: ASGIApp = self
        self._starlette = Starlette(
            routes=[
                Route(_PREFIX + "/{channel_id}/connect", self._connect, methods=["POST"]),
                Route(_PREFIX + "/{channel_id}/disconnect", self._disconnect, methods=["DELETE"]),
                Route(_PREFIX + "/{scope_id}/chats", self._create_chat, methods=["POST"]),
                Route(_PREFIX + "/{scope_id}/typing", self._typing, methods=["POST"]),
                Route(_PREFIX + "/{scope_id}/react", self._react, methods=["POST"]),
                Route(_PREFIX + "/{scope_id}/{msgid}/delivery_status", self._delivery_status, methods=["POST"]),
                Route(_PREFIX + "/{scope_id}/chats/{chat_id:path}/history", self._history, methods=["GET"]),
                Route(_PREFIX + "/{scope_id}", self._send, methods=["POST"]),
            ],
            exception_handlers={_Refused: self._refused, HTTPException: self._http_error},
        )

    # -- ASGI ---------------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry: records every request, applies injected faults, then routes."""
        if scope["type"] != "http":
            await self._starlette(scope, receive, send)
            return
        record = RequestRecord(scope["method"], scope["path"], scope.get("query_string", b"").decode("latin-1"))
        self.requests.append(record)
        scope.setdefault("state", {})["fake_amojo_record"] = record
        send = self._dated(send)
        fault = self._take_fault(scope["path"])
        if fault is not None:
            if fault.acted:  # the request takes effect; its answer is lost and replaced

                async def lose(message: Message) -> None:
                    pass

                await self._starlette(scope, receive, lose)
            record.status = fault.status
            await fault.response()(scope, receive, send)
            return

        async def send_recording(message: Message) -> None:
            if message["type"] == "http.response.start":
                record.status = message["status"]
            await send(message)

        await self._starlette(scope, receive, send_recording)

    def _dated(self, send: Send) -> Send:
        """``send`` with a ``Date`` header by the fake's clock on every answer, as any HTTP server's."""

        async def dated(message: Message) -> None:
            if message["type"] == "http.response.start":
                date = format_datetime(datetime.fromtimestamp(int(self.clock()), UTC), usegmt=True)
                message = {**message, "headers": [*message.get("headers", []), (b"date", date.encode())]}
            await send(message)

        return dated

    async def _refused(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, _Refused)
        return JSONResponse(exc.body, exc.status)

    async def _http_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        codes = {404: "not_found", 405: "method_not_allowed"}
        body = {
            "error": f"{request.method} {request.url.path}: {exc.detail}",
            "code": codes.get(exc.status_code, "error"),
        }
        return JSONResponse(body, exc.status_code, headers=exc.headers)

    # -- fault injection -----------------------------------------------------------------------------

    def fail_next(
        self,
        status: int,
        *,
        times: int = 1,
        path_contains: str | None = None,
        retry_after: float | None = None,
        body: dict[str, Any] | bytes | None = None,
        acted: bool = False,
    ) -> None:
        """Answer the next ``times`` requests (whose path contains ``path_contains``) with ``status``.

        ``body`` is the answer's JSON, or its raw bytes (``b""``, an HTML page: a proxy's answer);
        by default the fake's refusal shape. With ``acted`` each request first takes effect as
        usual, and only its answer is replaced (a proxy that mangles what amojo answered).
        """
        headers = {} if retry_after is None else {"Retry-After": f"{retry_after:g}"}
        body = body if body is not None else {"error": f"injected fault {status}", "code": "injected"}
        self._faults.append(_Fault(status, times, path_contains, headers, body, acted))

    def clear_faults(self) -> None:
        """Forget the faults :meth:`fail_next` injected that have not happened yet."""
        self._faults.clear()

    def _take_fault(self, path: str) -> _Fault | None:
        for fault in self._faults:
            if fault.path_contains is None or fault.path_contains in path:
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self._faults.remove(fault)
                return fault
        return None

    # -- request checks -------------------------------------------------------------------------------

    async def _verified_body(self, request: Request) -> bytes:
        body = await request.body()
        request.state.fake_amojo_record.body = body
        headers = request.headers
        content_type = headers.get("content-type")
        if content_type is None or content_type.split(";")[0].strip().lower() != CONTENT_TYPE:
            _refuse(400, f"Content-Type must be {CONTENT_TYPE}, got {content_type!r}", "bad_content_type")
        signature, date, content_md5 = headers.get("x-signature"), headers.get("date"), headers.get("content-md5")
        if not signature:
            _refuse(403, "X-Signature header is missing", "bad_signature")
        actual_md5 = hashlib.md5(body).hexdigest()
        if content_md5 is None or content_md5.lower() != actual_md5:
            _refuse(403, f"Content-MD5 {content_md5!r} is not the MD5 of the body ({actual_md5})", "bad_signature")
        if date is None:
            _refuse(403, "Date header is missing", "bad_signature")
        try:
            sent_at = parsedate_to_datetime(date).timestamp()
        except (TypeError, ValueError, IndexError):
            _refuse(403, f"Date {date!r} is not an RFC 2822 date", "bad_signature")
        if abs(self.clock() - sent_at) > SIGNATURE_TTL:
            _refuse(403, f"Date {date!r} is more than 15 minutes from now", "bad_signature")
        # The path exactly as it came in the request line, percent-encoding and all: amojo signs
        # what it received, so a client that signs one encoding and sends another is refused.
        path = request.scope["raw_path"].decode("latin-1")
        expected = signature_for(self.secret, request.method, content_md5, content_type, date, path)
        if not same_secret(signature.strip().lower(), expected):
            _refuse(403, f"X-Signature does not match the request (path signed: {path!r})", "bad_signature")
        return body

    @staticmethod
    def _decode(body: bytes, model: type[_M]) -> _M:
        try:
            return wire.decode(body, model)
        except msgspec.ValidationError as exc:
            _refuse(400, f"invalid request body: {exc}", "invalid_body")
        except msgspec.DecodeError as exc:
            _refuse(400, f"request body is not valid JSON: {exc}", "invalid_json")

    def _connection(self, scope_id: str) -> Connection:
        connection = self.connections.get(scope_id)
        if connection is None or not connection.connected:
            _refuse(
                404, f"unknown scope_id {scope_id!r}: the channel is not connected to that account", "unknown_scope"
            )
        return connection

    def _check_channel(self, channel_id: str) -> None:
        if channel_id != self.channel_id:
            _refuse(404, f"unknown channel {channel_id!r}", "unknown_channel")

    # -- methods (spec §4) --------------------------------------------------------------------------

    async def _connect(self, request: Request) -> Response:
        body = await self._verified_body(request)
        self._check_channel(request.path_params["channel_id"])
        connect = self._decode(body, wire.ConnectRequest)
        if connect.hook_api_version not in ("v1", "v2"):
            _refuse(400, f"hook_api_version must be 'v1' or 'v2', got {connect.hook_api_version!r}", "invalid_body")
        connection = self.connect(connect.account_id, title=connect.title)
        connection.hook_api_version = connect.hook_api_version
        connection.is_time_window_disabled = connect.is_time_window_disabled
        return _json(wire.ConnectResponse(scope_id=connection.scope_id, **msgspec.structs.asdict(connect)))

    async def _disconnect(self, request: Request) -> Response:
        body = await self._verified_body(request)
        self._check_channel(request.path_params["channel_id"])
        disconnect = self._decode(body, wire.DisconnectRequest)
        self._connection(f"{self.channel_id}_{disconnect.account_id}").connected = False
        return Response(status_code=200)

    async def _create_chat(self, request: Request) -> Response:
        body = await self._verified_body(request)
        scope_id = self._connection(request.path_params["scope_id"]).scope_id
        create = self._decode(body, wire.CreateChatRequest)
        user, profile = create.user, create.user.profile or wire.Profile()
        chat = self.find_chat(create.conversation_id, scope_id=scope_id)
        if chat is None:
            source = create.source.external_id if create.source else None
            chat = self.add_chat(scope_id, create.conversation_id, client_id=user.id, source_external_id=source)
            chat.name, chat.avatar, chat.phone, chat.email = user.name, user.avatar, profile.phone, profile.email
        info = wire.ChatUserInfo(
            id=chat.client_user_id,
            client_id=chat.client_id,
            name=chat.name,
            avatar=chat.avatar,
            phone=chat.phone,
            email=chat.email,
        )
        return _json(wire.CreateChatResponse(id=chat.id, user=info))

    async def _send(self, request: Request) -> Response:
        body = await self._verified_body(request)
        scope_id = self._connection(request.path_params["scope_id"]).scope_id
        event = self._decode(body, wire.MessageEvent)
        if event.event_type == "edit_message":
            return self._edit_message(scope_id, event.payload)
        return self._new_message(scope_id, event.payload)

    def _new_message(self, scope_id: str, payload: wire.MessagePayload) -> Response:
        problem = _content_problem(payload.message)
        if problem is not None:
            _refuse(400, problem, "invalid_message")
        if payload.sender.id is None and payload.sender.ref_id is None:
            _refuse(400, "payload.sender needs id (a client) or ref_id (an amoCRM user or the bot)", "invalid_message")
        if (scope_id, payload.msgid) in self._by_msgid:
            msgid = payload.msgid
            _refuse(400, f"message with msgid {msgid!r} already exists", "duplicate_msgid", msgid=msgid)
        from_client = payload.receiver is None
        client = payload.sender if from_client else payload.receiver
        assert client is not None
        chat = self._chat_for_message(scope_id, payload)
        if chat.client_id is None and client.id is not None:
            chat.client_id = client.id
            chat.name = chat.name or client.name
        if from_client:
            sender_id, receiver_id = chat.client_user_id, None
        else:
            sender_id = payload.sender.ref_id or str(uuid.uuid5(uuid.NAMESPACE_URL, f"{scope_id}/{payload.sender.id}"))
            receiver_id = chat.client_user_id
        message = StoredMessage(
            id=str(uuid.uuid4()),
            scope_id=scope_id,
            chat_id=chat.id,
            conversation_id=chat.conversation_id,
            msgid=payload.msgid,
            from_manager=False,
            from_client=from_client,
            sender_id=sender_id,
            receiver_id=receiver_id,
            content=payload.message,
            msec_timestamp=payload.msec_timestamp,
            silent=bool(payload.silent),
            payload=payload,
        )
        self._store(message)
        return _sent_answer(message, payload.msgid)

    def _chat_for_message(self, scope_id: str, payload: wire.MessagePayload) -> Chat:
        if payload.conversation_ref_id is not None:
            chat = self.chats.get(payload.conversation_ref_id)
            if chat is None or chat.scope_id != scope_id:
                _refuse(404, f"unknown conversation_ref_id {payload.conversation_ref_id!r}", "unknown_chat")
            if chat.conversation_id is None:
                chat.conversation_id = payload.conversation_id  # write-first chat tied to our conversation
            elif chat.conversation_id != payload.conversation_id:
                _refuse(
                    400,
                    f"conversation_ref_id {chat.id!r} belongs to conversation_id {chat.conversation_id!r},"
                    f" not {payload.conversation_id!r}",
                    "conversation_mismatch",
                )
            return chat
        chat = self.find_chat(payload.conversation_id, scope_id=scope_id)
        if chat is None:
            source = payload.source.external_id if payload.source else None
            chat = self.add_chat(scope_id, payload.conversation_id, source_external_id=source)
        return chat

    def _edit_message(self, scope_id: str, payload: wire.MessagePayload) -> Response:
        if payload.id is None:
            _refuse(400, "edit_message needs payload.id, amoCRM's id of the message", "invalid_message")
        message = self._message_in(scope_id, payload.id)
        message.edits.append(payload)
        status = payload.message.delivery_status
        if status is not None:
            message.statuses.append(wire.DeliveryStatusRequest(msgid=message.id, **msgspec.structs.asdict(status)))
        return _sent_answer(message, payload.msgid)

    async def _delivery_status(self, request: Request) -> Response:
        body = await self._verified_body(request)
        scope_id = self._connection(request.path_params["scope_id"]).scope_id
        status = self._decode(body, wire.DeliveryStatusRequest)
        path_msgid = request.path_params["msgid"]
        if status.msgid != path_msgid:
            _refuse(400, f"body msgid {status.msgid!r} differs from the path's {path_msgid!r}", "invalid_body")
        self._message_in(scope_id, path_msgid).statuses.append(status)
        return Response(status_code=200)

    async def _history(self, request: Request) -> Response:
        await self._verified_body(request)
        scope_id = self._connection(request.path_params["scope_id"]).scope_id
        try:
            offset = int(request.query_params.get("offset", "0"))
            limit = int(request.query_params.get("limit", str(MAX_HISTORY_LIMIT)))
        except ValueError:
            _refuse(400, "offset and limit must be integers", "bad_history_range")
        if offset < 0 or not 1 <= limit <= MAX_HISTORY_LIMIT:
            _refuse(400, f"need offset >= 0 and 1 <= limit <= {MAX_HISTORY_LIMIT}", "bad_history_range")
        # amoCRM's chat id only: the integration's own conversation_id names no chat here.
        chat = self.chats.get(request.path_params["chat_id"])
        if chat is None or chat.scope_id != scope_id:
            return Response(status_code=204)
        newest_first = sorted(self.messages_in(chat.id), key=lambda m: m.msec_timestamp, reverse=True)
        page = newest_first[offset : offset + limit]
        if not page:
            return Response(status_code=204)
        return _json(wire.HistoryResponse(messages=[self._history_entry(chat, m) for m in page]))

    def _history_entry(self, chat: Chat, message: StoredMessage) -> wire.HistoryMessage:
        client = wire.HistoryParticipant(id=chat.client_user_id, client_id=chat.client_id, name=chat.name)
        body = msgspec.convert(msgspec.to_builtins(message.content), wire.HistoryMessageBody)
        body.id, body.client_id, body.text = message.id, message.msgid, message.text
        return wire.HistoryMessage(
            timestamp=message.msec_timestamp // 1000,
            msec_timestamp=message.msec_timestamp,
            sender=client if message.from_client else wire.HistoryParticipant(id=message.sender_id),
            receiver=None if message.from_client else client,
            message=body,
        )

    async def _typing(self, request: Request) -> Response:
        body = await self._verified_body(request)
        scope_id = self._connection(request.path_params["scope_id"]).scope_id
        self.typing.append(TypingRecord(scope_id, self._decode(body, wire.TypingRequest), self.clock()))
        return Response(status_code=204)

    async def _react(self, request: Request) -> Response:
        body = await self._verified_body(request)
        scope_id = self._connection(request.path_params["scope_id"]).scope_id
        react = self._decode(body, wire.ReactRequest)
        chat_key = react.conversation_ref_id or react.conversation_id
        chat = self.find_chat(chat_key, scope_id=scope_id) if chat_key else None
        if chat is None:
            _refuse(404, f"unknown conversation {chat_key!r}", "unknown_chat")
        if react.id is not None:
            message = self._message_in(scope_id, react.id)
        else:
            found = self._by_msgid.get((scope_id, react.msgid or ""))
            if found is None:
                _refuse(404, f"unknown message msgid {react.msgid!r}", "unknown_message")
            message = found
        if message.chat_id != chat.id:
            _refuse(404, f"message {message.id!r} is not in conversation {chat_key!r}", "unknown_message")
        self.reactions.append(ReactionRecord(scope_id, message.id, react))
        return Response(status_code=200)

    # -- direct state helpers ------------------------------------------------------------------------

    def connect(self, account_id: str, *, title: str | None = None, webhook_url: str | None = None) -> Connection:
        """Connect an account without HTTP (idempotent); returns the connection."""
        scope_id = f"{self.channel_id}_{account_id}"
        connection = self.connections.get(scope_id)
        if connection is None:
            connection = self.connections[scope_id] = Connection(scope_id, account_id)
        connection.connected = True
        connection.title = title if title is not None else connection.title
        connection.webhook_url = webhook_url or connection.webhook_url
        return connection

    def disconnect(self, account_id: str) -> None:
        """Disconnect an account without HTTP (the account's admin turned the integration off).

        As on amoCRM, its scope then refuses every call (404 ``unknown_scope``) and no more hooks are sent.
        """
        self.connections[f"{self.channel_id}_{account_id}"].connected = False

    def set_webhook_url(self, scope_id: str, url: str) -> None:
        """Send this scope's hooks to ``url`` (``:scope_id`` in it is substituted)."""
        self.connections[scope_id].webhook_url = url

    def add_chat(self, scope_id: str, conversation_id: str | None, **details: Any) -> Chat:
        """Create a chat without HTTP; ``conversation_id`` None makes a write-first chat.

        ``details`` are :class:`Chat` fields: ``client_id``, ``name``, ``phone``, ``email``, ``source_external_id``...
        """
        chat = Chat(str(uuid.uuid4()), scope_id, conversation_id, str(uuid.uuid4()), **details)
        self.chats[chat.id] = chat
        return chat

    def _store(self, message: StoredMessage) -> None:
        self.messages.append(message)
        self._by_id[message.id] = message
        if message.msgid is not None:
            self._by_msgid[(message.scope_id, message.msgid)] = message

    def _message_in(self, scope_id: str, message_id: str) -> StoredMessage:
        message = self._by_id.get(message_id)
        if message is None or message.scope_id != scope_id:
            _refuse(404, f"unknown message {message_id!r}", "unknown_message")
        return message

    # -- queries ----------------------------------------------------------------------------------

    def find_chat(self, conversation: str, *, scope_id: str | None = None) -> Chat | None:
        """The chat with our ``conversation`` id, or amoCRM's chat id ``conversation``."""
        by_id = self.chats.get(conversation)
        if by_id is not None and scope_id in (None, by_id.scope_id):
            return by_id
        for chat in self.chats.values():
            if chat.conversation_id == conversation and scope_id in (None, chat.scope_id):
                return chat
        return None

    def messages_in(self, conversation: str, *, scope_id: str | None = None) -> list[StoredMessage]:
        """Messages of a chat (ours or amoCRM's id), oldest first."""
        chat = self.find_chat(conversation, scope_id=scope_id)
        return [] if chat is None else [m for m in self.messages if m.chat_id == chat.id]

    def message(self, message_id: str) -> StoredMessage:
        """The message with amoCRM's id ``message_id`` (KeyError if unknown)."""
        return self._by_id[message_id]

    def message_by_msgid(self, msgid: str, *, scope_id: str | None = None) -> StoredMessage | None:
        """The integration's message with our ``msgid``."""
        for message in self.messages:
            if message.msgid == msgid and scope_id in (None, message.scope_id):
                return message
        return None

    def requests_to(self, path_contains: str, method: str | None = None) -> list[RequestRecord]:
        """Received requests whose path contains ``path_contains`` (and of ``method``, if given)."""
        return [r for r in self.requests if path_contains in r.path and method in (None, r.method)]

    # -- webhooks ---------------------------------------------------------------------------------

    async def _post_hook(self, scope_id: str, hook: msgspec.Struct) -> tuple[int | None, bytes]:
        connection = self.connections.get(scope_id)
        if connection is None or not connection.connected:
            raise LookupError(f"scope {scope_id!r} is not connected, so amoCRM sends it no hooks; call connect() first")
        template = connection.webhook_url or self.webhook_url
        if template is None:
            raise LookupError(f"no webhook URL for scope {scope_id!r}: pass webhook_url= or call set_webhook_url()")
        url = template.replace(":scope_id", scope_id).replace("{scope_id}", scope_id)
        signed = wire.encode(hook) + (b"\n" if self.trailing_newline is True else b"")
        body = signed + (b"\n" if self.trailing_newline == "unsigned" else b"")
        signature = hmac.new(self.secret.encode("ascii"), signed, hashlib.sha1).hexdigest()
        headers = {"Content-Type": CONTENT_TYPE, "X-Signature": signature}
        status: int | None
        try:
            if self.webhook_client is None:
                async with httpx.AsyncClient() as client:
                    response = await client.post(url, content=body, headers=headers, timeout=5.0)
            else:
                response = await self.webhook_client.post(url, content=body, headers=headers, timeout=5.0)
            status = response.status_code
        except httpx.HTTPError:
            status = None  # amoCRM sends a hook once and never retries
        self.webhooks.append(SentWebhook(url, body, headers, status))
        return status, body

    def _emit_chat(self, scope_id: str, conversation: str) -> Chat:
        chat = self.find_chat(conversation, scope_id=scope_id)
        if chat is None:
            raise LookupError(f"no chat {conversation!r} in scope {scope_id!r}")
        return chat

    def _now(self) -> tuple[int, int]:
        now = self.clock()
        return int(now), int(now * 1000)

    async def emit_message(
        self,
        scope_id: str,
        conversation: str,
        *,
        reply_to: str | None = None,
        post_id: str | None = None,
        source_external_id: str | None = None,
        sender_id: str | None = None,
        **fields: Any,
    ) -> EmitResult:
        """A manager's message in an existing chat (our conversation_id or amoCRM's chat id).

        ``fields`` are those of :class:`~amoconnect.amojo.wire.HookMessageBody` (``type`` defaults
        to text; ``text``, ``media``, ``file_name``, ``markup``, ``template``, ``media_group_id``...).
        ``reply_to`` is amoCRM's id of the quoted message. The message is recorded before the hook
        is sent, so a delivery status for it is accepted at once.
        """
        chat = self._emit_chat(scope_id, conversation)
        seconds, msec = self._now()
        quoted = None
        if reply_to is not None:
            old = self._by_id[reply_to]
            quoted = wire.EmbeddedMessage(
                id=old.id,
                client_id=old.msgid,
                type=old.type,
                text=old.text or "",
                timestamp=old.msec_timestamp // 1000,
                msec_timestamp=old.msec_timestamp,
                sender=wire.EmbeddedSender(id=old.sender_id),
            )
        post = wire.HookPost(id=post_id) if post_id is not None else None
        body = wire.HookMessageBody(
            id=str(uuid.uuid4()),
            **{"type": "text", **_HOOK_EMPTY_FIELDS, **fields},
            reply_to=wire.ReplyTo(message=quoted) if quoted else None,
            post=post,
        )
        source = source_external_id or chat.source_external_id
        receiver = wire.HookReceiver(id=chat.client_user_id, client_id=chat.client_id, phone=chat.phone, name=chat.name)
        hook = wire.MessageHook(
            account_id=self.connections[scope_id].account_id,
            time=seconds,
            message=wire.HookMessage(
                conversation=wire.Conversation(id=chat.id, client_id=chat.conversation_id),
                source=wire.Source(external_id=source) if source else None,
                sender=wire.HookSender(id=sender_id or self.manager_id, name=self.manager_name),
                receiver=receiver,
                timestamp=seconds,
                msec_timestamp=msec,
                message=body,
            ),
        )
        stored = StoredMessage(
            id=body.id,
            scope_id=scope_id,
            chat_id=chat.id,
            conversation_id=chat.conversation_id,
            msgid=None,
            from_manager=True,
            from_client=False,
            sender_id=hook.message.sender.id,
            receiver_id=chat.client_user_id,
            content=body,
            msec_timestamp=msec,
            hook=hook,
        )
        self._store(stored)
        status, raw = await self._post_hook(scope_id, hook)
        return EmitResult(status, raw, message_id=body.id, chat_id=chat.id)

    async def emit_text(self, scope_id: str, conversation: str, text: str, **options: Any) -> EmitResult:
        """A manager's text message; ``options`` as for :meth:`emit_message`."""
        return await self.emit_message(scope_id, conversation, type="text", text=text, **options)

    async def emit_media(self, scope_id: str, conversation: str, type: str, media: str, **fields: Any) -> EmitResult:
        """A manager's file, picture, video, voice, audio or sticker at URL ``media``.

        Pass ``file_name`` and ``file_size`` (and ``text``, ``thumbnail``, ``media_group_id``...) in ``fields``.
        """
        return await self.emit_message(scope_id, conversation, type=type, media=media, **fields)

    async def emit_buttons(
        self, scope_id: str, conversation: str, text: str, buttons: list[list[wire.Button]]
    ) -> EmitResult:
        """A text message with inline buttons (rows of buttons)."""
        markup = wire.Markup(mode="inline", buttons=buttons)
        return await self.emit_message(scope_id, conversation, text=text, markup=markup)

    async def emit_list_message(
        self, scope_id: str, conversation: str, list_message: wire.ListMessage, *, text: str | None = None
    ) -> EmitResult:
        """A WhatsApp List Message as Salesbot sends it."""
        markup = wire.Markup(list_message=list_message)
        return await self.emit_message(scope_id, conversation, text=text or list_message.body, markup=markup)

    async def emit_template(
        self,
        scope_id: str,
        conversation: str,
        content: str,
        params: dict[str, str],
        *,
        template_id: int | str = 1,
        external_id: str | None = None,
    ) -> EmitResult:
        """A template message: ``text`` is ``content`` with the ``params`` markers filled in."""
        text = content
        for key, value in params.items():
            text = text.replace(key, value)
        template = wire.Template(
            id=template_id,
            external_id=external_id,
            content=content,
            params=[wire.TemplateParam(key=key, value=value) for key, value in params.items()],
        )
        return await self.emit_message(scope_id, conversation, text=text, template=template)

    async def emit_comment_reply(self, scope_id: str, conversation: str, post_id: str, text: str) -> EmitResult:
        """A manager's reply in the comments of our post ``post_id``."""
        return await self.emit_message(scope_id, conversation, text=text, post_id=post_id)

    async def emit_reply(self, scope_id: str, conversation: str, reply_to: str, text: str) -> EmitResult:
        """A manager's text quoting amoCRM's message ``reply_to``."""
        return await self.emit_message(scope_id, conversation, text=text, reply_to=reply_to)

    async def emit_write_first(
        self,
        scope_id: str,
        phone: str,
        text: str,
        *,
        source_external_id: str,
        name: str | None = None,
    ) -> EmitResult:
        """A manager starts a chat with ``phone``: a new amoCRM chat without our conversation_id."""
        chat = self.add_chat(scope_id, None, phone=phone, name=name, source_external_id=source_external_id)
        return await self.emit_message(scope_id, chat.id, text=text)

    async def emit_reaction(
        self,
        scope_id: str,
        conversation: str,
        message_id: str,
        emoji: str | None = None,
        *,
        unreact: bool = False,
        nested: bool = False,
    ) -> EmitResult:
        """A manager's reaction to amoCRM's message ``message_id``: flat ``msgid`` or nested ``message{id}``."""
        chat = self._emit_chat(scope_id, conversation)
        target = self._by_id.get(message_id)
        reaction = wire.ReactionAction(
            user=wire.UserRef(id=self.manager_id),
            conversation=wire.Conversation(id=chat.id, client_id=chat.conversation_id),
            type="unreact" if unreact else "react",
            msgid=None if nested else message_id,
            message=wire.ReactionMessageRef(id=message_id, client_id=target.msgid if target else None)
            if nested
            else None,
            emoji=None if unreact else emoji,
        )
        hook = wire.ReactionHook(
            account_id=self.connections[scope_id].account_id,
            time=self._now()[0],
            action=wire.ReactionHookAction(reaction=reaction),
        )
        status, raw = await self._post_hook(scope_id, hook)
        return EmitResult(status, raw, message_id=message_id, chat_id=chat.id)

    async def emit_typing(self, scope_id: str, conversation: str, *, post_id: str | None = None) -> EmitResult:
        """A manager is typing (``expired_at`` = now + 5 s)."""
        chat = self._emit_chat(scope_id, conversation)
        seconds = self._now()[0]
        typing = wire.TypingAction(
            user=wire.UserRef(id=self.manager_id),
            conversation=wire.Conversation(id=chat.id, client_id=chat.conversation_id),
            expired_at=seconds + 5,
            post_id=post_id,
        )
        hook = wire.TypingHook(
            account_id=self.connections[scope_id].account_id,
            time=seconds,
            action=wire.TypingHookAction(typing=typing),
        )
        status, raw = await self._post_hook(scope_id, hook)
        return EmitResult(status, raw, chat_id=chat.id)
