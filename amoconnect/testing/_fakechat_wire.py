"""fakechat's world and wire shapes: what :class:`~amoconnect.testing.fakechat_api.FakeChat` keeps and accepts.

Internal to the test kit: the records (messages, reactions, deliveries) are re-exported by
:mod:`amoconnect.testing.fakechat_api`; the ``*Params`` Structs are the Bot API methods'
parameters, decoded strictly (an unknown field is a 400, as a typo in an adapter should be).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final, NoReturn

import msgspec
from starlette.responses import JSONResponse

from ..model import MediaKind

__all__ = [
    "DEFAULT_DESCRIPTIONS",
    "MAX_CALLBACK_DATA",
    "MAX_CAPTION_LENGTH",
    "MAX_TEXT_LENGTH",
    "RATE_WINDOW",
    "REACTIONS",
    "AnswerComment",
    "ApiError",
    "BotMessage",
    "BotReaction",
    "Button",
    "ChatOnly",
    "ClientMedia",
    "CommentAnswer",
    "Delivery",
    "Fault",
    "GetFile",
    "Id",
    "ListMenu",
    "ListRow",
    "ListSection",
    "NoParams",
    "OpenChat",
    "Params",
    "PostRecord",
    "SendMedia",
    "SendMessage",
    "SetReaction",
    "SetWebhook",
    "StoredFile",
    "TemplateRef",
    "TypingEvent",
    "User",
    "error_response",
    "fail",
]

MAX_TEXT_LENGTH: Final = 4096
"""Longest text ``sendMessage`` accepts."""
MAX_CAPTION_LENGTH: Final = 1024
"""Longest caption ``sendMedia`` accepts."""
REACTIONS: Final = ("👍", "❤️", "😂", "😮", "😢", "🙏")
"""The only emoji fakechat accepts as reactions, spelled exactly so."""

RATE_WINDOW = 1.0  # rate_limit counts messages in a sliding window of one second
MAX_CALLBACK_DATA = 64


# -- records ------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ClientMedia:
    """A file a client sends (``client_writes(..., media=ClientMedia(...))``)."""

    kind: MediaKind
    content: bytes
    file_name: str = ""
    mime_type: str = ""


@dataclass(kw_only=True)
class BotMessage:
    """A message in a chat, from the bot (``from_bot``) or from the client, with every field it was sent with."""

    message_id: str
    chat: str
    from_bot: bool
    date: int
    text: str = ""
    """Text, or the caption of media."""
    kind: str = "text"
    """``text``, ``list``, ``template`` or a media kind."""
    url: str | None = None
    file_name: str = ""
    file_id: str | None = None
    buttons: list[list[dict[str, Any]]] = field(default_factory=list)
    list_menu: dict[str, Any] | None = None
    """The ``list`` parameter of a list message."""
    template: dict[str, Any] | None = None
    reply_to: str | None = None
    status: str = "sent"
    """The last status delivered for it (``deliver_status``)."""


@dataclass(frozen=True)
class BotReaction:
    """A reaction the bot set (``emoji`` empty: removed)."""

    chat: str
    message_id: str
    emoji: str


@dataclass(frozen=True)
class TypingEvent:
    """A ``sendTyping`` call of the bot."""

    chat: str
    at: float


@dataclass(frozen=True)
class CommentAnswer:
    """A public answer the bot gave under a comment."""

    post_id: str
    comment_id: str
    text: str
    answer_id: str


@dataclass(frozen=True)
class Delivery:
    """One attempt to deliver a webhook update; ``status`` is ``None`` when no answer came."""

    update_id: int
    attempt: int
    url: str
    body: bytes
    headers: dict[str, str]
    status: int | None


@dataclass(kw_only=True)
class User:
    chat: str
    id: str
    name: str
    username: str | None = None
    phone: str | None = None
    blocked: bool = False
    messages: list[BotMessage] = field(default_factory=list)

    def as_from(self) -> dict[str, Any]:
        found = {"id": self.id, "name": self.name, "username": self.username, "phone": self.phone}
        return {key: value for key, value in found.items() if value is not None}


@dataclass(kw_only=True)
class PostRecord:
    id: str
    url: str
    caption: str
    comments: set[str] = field(default_factory=set)


@dataclass(kw_only=True)
class StoredFile:
    path: str
    content: bytes
    mime_type: str


@dataclass(kw_only=True)
class Fault:
    remaining: int
    status: int
    retry_after: float | None
    method: str | None
    description: str | None


class ApiError(Exception):
    def __init__(self, status: int, description: str, retry_after: int | None = None) -> None:
        super().__init__(description)
        self.status = status
        self.description = description
        self.retry_after = retry_after


def fail(status: int, description: str, retry_after: int | None = None) -> NoReturn:
    raise ApiError(status, description, retry_after)


def error_response(status: int, description: str, retry_after: float | None = None) -> JSONResponse:
    body: dict[str, Any] = {"ok": False, "error_code": status, "description": description}
    if retry_after is not None:
        body["parameters"] = {"retry_after": retry_after}
    return JSONResponse(body, status)


DEFAULT_DESCRIPTIONS = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    409: "Conflict",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


# -- method parameters --------------------------------------------------------------------------

Id = str | int


class Params(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    pass


class Button(Params):
    text: str
    url: str | None = None
    callback_data: str | None = None


class ListRow(Params):
    callback_data: str
    title: str
    description: str = ""


class ListSection(Params):
    title: str
    rows: list[ListRow]


class ListMenu(Params):
    body: str
    button: str
    sections: list[ListSection]
    header: str = ""
    footer: str = ""


class TemplateRef(Params):
    name: str
    params: list[str] = []


class SendMessage(Params):
    chat_id: Id
    text: str = ""
    reply_to: Id | None = None
    buttons: list[list[Button]] = []
    menu: ListMenu | None = msgspec.field(default=None, name="list")
    template: TemplateRef | None = None


class SendMedia(Params):
    chat_id: Id
    kind: MediaKind
    url: str
    caption: str = ""
    file_name: str = ""
    reply_to: Id | None = None
    buttons: list[list[Button]] = []


class OpenChat(Params):
    phone: str


class SetReaction(Params):
    chat_id: Id
    message_id: Id
    emoji: str = ""


class ChatOnly(Params):
    chat_id: Id


class AnswerComment(Params):
    post_id: Id
    comment_id: Id
    text: str


class GetFile(Params):
    file_id: str


class SetWebhook(Params):
    url: str = ""
    secret: str = ""


class NoParams(Params):
    pass
