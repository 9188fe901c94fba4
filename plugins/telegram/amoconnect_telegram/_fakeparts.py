"""Building blocks of :mod:`amoconnect_telegram.fake`: records, the file store, method parameters, request checks.

Internal; the public names are re-exported by :mod:`amoconnect_telegram.fake`.
"""

from __future__ import annotations

import itertools
import json
import mimetypes
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any, Final, NoReturn
from urllib.parse import parse_qsl

import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse

from .botapi import MAX_CALLBACK_DATA_BYTES

CHAT_ACTIONS: Final = frozenset(
    {
        "typing",
        "upload_photo",
        "record_video",
        "upload_video",
        "record_voice",
        "upload_voice",
        "upload_document",
        "choose_sticker",
        "find_location",
        "record_video_note",
        "upload_video_note",
    }
)
"""Actions ``sendChatAction`` accepts."""

WEBHOOK_ACTIVE: Final = (
    "Conflict: can't use getUpdates method while webhook is active; use deleteWebhook to delete the webhook first"
)
POLL_TERMINATED: Final = (
    "Conflict: terminated by other getUpdates request; make sure that only one bot instance is running"
)
TEXT_BUTTONS_REFUSED: Final = (
    "Bad Request: can't parse inline keyboard button: Text buttons are unallowed in the inline keyboard"
)
DEFAULT_ALLOWED = frozenset(
    {"message", "edited_message", "callback_query", "my_chat_member", "channel_post", "edited_channel_post"}
)
ALL_KINDS = DEFAULT_ALLOWED | {"message_reaction", "message_reaction_count", "chat_member"}
NESTED = frozenset({"reply_markup", "reply_parameters", "allowed_updates", "reaction", "link_preview_options"})
NESTED_ERRORS = {
    "reply_markup": "Bad Request: can't parse reply keyboard markup JSON object",
    "reply_parameters": "Bad Request: can't parse reply parameters JSON object",
    "reaction": "Bad Request: can't parse reaction types JSON object",
}
MEDIA_METHODS = {
    "photo": "sendPhoto",
    "document": "sendDocument",
    "video": "sendVideo",
    "voice": "sendVoice",
    "audio": "sendAudio",
    "sticker": "sendSticker",
}
MEDIA_FIELDS = {method.lower(): name for name, method in MEDIA_METHODS.items()}
DESCRIPTIONS = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 409: "Conflict"}
MIME = {
    "photo": "image/jpeg",
    "video": "video/mp4",
    "voice": "audio/ogg",
    "audio": "audio/mpeg",
    "video_note": "video/mp4",
    "sticker": "image/webp",
    "animation": "video/mp4",
    "document": "application/octet-stream",
}


# -- records --------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class SentMessage:
    """A message the bot sent, as the fake stored it."""

    message_id: int
    chat: int
    method: str
    kind: str
    """``text`` or the media parameter: ``photo``, ``document``, ``video``, ``voice``, ``audio``, ``sticker``."""
    text: str = ""
    """The text, or the caption."""
    media: str | None = None
    """The media parameter as sent: a URL or a ``file_id`` (``None`` for an upload)."""
    content: bytes | None = None
    """The media's bytes: uploaded, or fetched from the URL."""
    file_name: str = ""
    reply_markup: dict[str, Any] | None = None
    reply_to: int | None = None
    result: dict[str, Any] = field(default_factory=dict)
    """The ``Message`` the fake answered."""

    @property
    def buttons(self) -> list[list[dict[str, Any]]]:
        """The inline keyboard's rows (``[]`` without one)."""
        return list((self.reply_markup or {}).get("inline_keyboard", []))


@dataclass(frozen=True)
class BotReaction:
    """A ``setMessageReaction`` call that succeeded (``emoji`` empty: removed)."""

    chat: int
    message_id: int
    emoji: tuple[str, ...]


@dataclass(frozen=True)
class ChatAction:
    """A ``sendChatAction`` call that succeeded."""

    chat: int
    action: str
    at: float


@dataclass(frozen=True)
class ApiCall:
    """One Bot API request: the method as called, its decoded parameters, uploads, and the status answered."""

    method: str
    params: dict[str, Any]
    files: dict[str, tuple[str, bytes]]
    status: int


@dataclass(frozen=True)
class Delivery:
    """One attempt to POST an update to the webhook; ``status`` is ``None`` when no answer came."""

    update_id: int
    attempt: int
    url: str
    body: bytes
    headers: dict[str, str]
    status: int | None


@dataclass(kw_only=True)
class Client:
    chat: int
    user: dict[str, Any]
    blocked: bool = False
    started: bool = True
    """Whether the user ever wrote to the bot: until then Telegram lets the bot not write first."""
    ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    messages: dict[int, dict[str, Any]] = field(default_factory=dict)
    reactions: dict[int, list[str]] = field(default_factory=dict)

    def chat_object(self) -> dict[str, Any]:
        keys = ("first_name", "last_name", "username")
        return {"id": self.chat, "type": "private", **{k: self.user[k] for k in keys if k in self.user}}


@dataclass(kw_only=True)
class StoredFile:
    file_id: str
    unique_id: str
    path: str
    content: bytes
    mime_type: str


@dataclass(kw_only=True)
class Fault:
    remaining: int
    status: int
    retry_after: int | None
    method: str | None
    description: str | None


class ApiError(Exception):
    def __init__(self, status: int, description: str, retry_after: int | None = None) -> None:
        super().__init__(description)
        self.status = status
        self.description = description
        self.retry_after = retry_after


def fail(status: int, description: str) -> NoReturn:
    raise ApiError(status, description)


def envelope_error(status: int, description: str, retry_after: int | None = None) -> JSONResponse:
    body: dict[str, Any] = {"ok": False, "error_code": status, "description": description}
    if retry_after is not None:
        body["parameters"] = {"retry_after": retry_after}
    return JSONResponse(body, status)


# -- method parameters ----------------------------------------------------------------------------


class Params(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class ChatParams(Params):
    chat_id: int | str | None = None
    business_connection_id: str | None = None
    message_thread_id: int | None = None


class SendParams(ChatParams):
    reply_parameters: dict[str, Any] | None = None
    reply_markup: dict[str, Any] | None = None
    disable_notification: bool = False
    protect_content: bool = False
    allow_paid_broadcast: bool = False
    message_effect_id: str | None = None


class SendMessageParams(SendParams):
    text: str = ""
    parse_mode: str | None = None
    entities: list[dict[str, Any]] | None = None
    link_preview_options: dict[str, Any] | None = None


class SendMediaParams(SendParams):
    photo: str | None = None
    document: str | None = None
    video: str | None = None
    voice: str | None = None
    audio: str | None = None
    sticker: str | None = None
    caption: str | None = None
    parse_mode: str | None = None
    caption_entities: list[dict[str, Any]] | None = None
    duration: int | None = None
    width: int | None = None
    height: int | None = None
    performer: str | None = None
    title: str | None = None
    emoji: str | None = None
    has_spoiler: bool = False
    supports_streaming: bool = False
    disable_content_type_detection: bool = False


class ChatActionParams(ChatParams):
    action: str = ""


class SetReactionParams(ChatParams):
    message_id: int = 0
    reaction: list[dict[str, Any]] = []
    is_big: bool = False


class AnswerCallbackParams(Params):
    callback_query_id: str = ""
    text: str | None = None
    show_alert: bool = False
    url: str | None = None
    cache_time: int = 0


class GetFileParams(Params):
    file_id: str = ""


class SetWebhookParams(Params):
    url: str = ""
    secret_token: str | None = None
    allowed_updates: list[str] | None = None
    drop_pending_updates: bool = False
    max_connections: int = 40
    ip_address: str | None = None


class DeleteWebhookParams(Params):
    drop_pending_updates: bool = False


class GetUpdatesParams(Params):
    offset: int = 0
    limit: int = 100
    timeout: int = 0
    allowed_updates: list[str] | None = None


class NoParams(Params):
    pass


class FileStore:
    """Files the fake knows, by ``file_id`` and by download path."""

    def __init__(self) -> None:
        self.by_id: dict[str, StoredFile] = {}
        self.by_path: dict[str, StoredFile] = {}
        self._numbers = itertools.count(1)

    def add(self, kind: str, content: bytes, *, file_name: str = "", mime_type: str = "") -> StoredFile:
        """Keep ``content`` as a new file of ``kind``."""
        number = next(self._numbers)
        if "." in file_name:
            extension = file_name.rpartition(".")[2]
        else:
            extension = (mimetypes.guess_extension(mime_type or MIME.get(kind, "")) or ".bin").lstrip(".")
        stored = StoredFile(
            file_id=f"AgAC{kind[:3].upper()}{number:06d}-fake",
            unique_id=f"AQAD{number:06d}",
            path=f"{kind}s/file_{number}.{extension}",
            content=content,
            mime_type=mime_type or MIME.get(kind, "application/octet-stream"),
        )
        self.by_id[stored.file_id] = self.by_path[stored.path] = stored
        return stored


# -- request parsing and checks ------------------------------------------------------------------


async def read_params(request: Request) -> tuple[dict[str, Any], dict[str, tuple[str, bytes]]]:
    params: dict[str, Any] = dict(request.query_params)
    files: dict[str, tuple[str, bytes]] = {}
    body = await request.body()
    content_type = request.headers.get("content-type", "")
    if body and content_type.startswith("application/json"):
        try:
            decoded = json.loads(body)
        except ValueError:
            fail(400, "Bad Request: can't parse JSON object")
        if not isinstance(decoded, dict):
            fail(400, "Bad Request: can't parse JSON object")
        return {**params, **decoded}, files
    if body and content_type.startswith("application/x-www-form-urlencoded"):
        params.update(parse_qsl(body.decode(), keep_blank_values=True))
    elif body and content_type.startswith("multipart/form-data"):
        message = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            payload = part.get_payload(decode=True)
            if not isinstance(name, str) or not isinstance(payload, bytes):
                continue
            filename = part.get_filename()
            if filename is not None:
                files[name] = (filename, payload)
            else:
                params[name] = payload.decode()
    for key in NESTED & params.keys():
        if isinstance(params[key], str):
            try:
                params[key] = json.loads(params[key])
            except ValueError:
                fail(400, NESTED_ERRORS.get(key, f"Bad Request: can't parse {key} JSON object"))
    return params, files


def quoted(message: dict[str, Any]) -> dict[str, Any]:
    """A message as it appears quoted in ``reply_to_message`` (without its own quote)."""
    return {key: value for key, value in message.items() if key != "reply_to_message"}


def reply_to(client: Client, reply: dict[str, Any] | None) -> dict[str, Any]:
    """The ``reply_to_message`` of a send with ``reply_parameters`` ``reply``, checked."""
    if not reply:
        return {}
    message_id = reply.get("message_id")
    if not isinstance(message_id, int):
        fail(400, "Bad Request: can't parse reply parameters JSON object")
    original = client.messages.get(message_id)
    if original is None:
        if reply.get("allow_sending_without_reply"):
            return {}
        fail(400, "Bad Request: message to be replied not found")
    return {"reply_to_message": quoted(original)}


def check_markup(markup: dict[str, Any] | None) -> dict[str, Any]:
    if markup is None:
        return {}
    if not isinstance(markup, dict):
        fail(400, "Bad Request: can't parse reply keyboard markup JSON object")
    rows = markup.get("inline_keyboard")
    if rows is None:
        return {}  # reply keyboards and the like are accepted and not echoed
    if not isinstance(rows, list) or not all(isinstance(row, list) for row in rows):
        fail(400, "Bad Request: can't parse reply keyboard markup JSON object")
    for row in rows:
        for button in row:
            if not isinstance(button, dict) or not button.get("text"):
                fail(400, "Bad Request: can't parse inline keyboard button: Text is missing")
            if "callback_data" in button:
                data = button["callback_data"]
                if not isinstance(data, str) or not 1 <= len(data.encode()) <= MAX_CALLBACK_DATA_BYTES:
                    fail(400, "Bad Request: BUTTON_DATA_INVALID")
            elif "url" in button:
                url = button["url"]
                if not isinstance(url, str) or not url.startswith(("http://", "https://", "tg://")):
                    fail(400, "Bad Request: BUTTON_URL_INVALID")
            else:
                fail(400, TEXT_BUTTONS_REFUSED)
    return {"reply_markup": {"inline_keyboard": rows}}


def media_object(kind: str, stored: StoredFile, file_name: str = "", duration: int = 3) -> Any:
    base: dict[str, Any] = {
        "file_id": stored.file_id,
        "file_unique_id": stored.unique_id,
        "file_size": len(stored.content),
    }
    if kind == "photo":
        thumb = {**base, "file_id": stored.file_id + "-s", "file_unique_id": stored.unique_id + "s"}
        return [{**thumb, "width": 90, "height": 60, "file_size": 1000}, {**base, "width": 1280, "height": 853}]
    if kind == "sticker":
        return {**base, "type": "regular", "width": 512, "height": 512, "is_animated": False, "is_video": False}
    if kind == "video_note":
        return {**base, "length": 240, "duration": duration}
    if kind in ("video", "animation"):
        base.update(width=640, height=360, duration=duration)
    elif kind in ("voice", "audio"):
        base["duration"] = duration
    if kind in ("document", "video", "audio", "animation") and file_name:
        base["file_name"] = file_name
    if kind != "video_note":
        base["mime_type"] = stored.mime_type
    return base
