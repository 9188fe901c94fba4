"""fakechat's world and wire shapes: what :class:`~amoconnect.testing.fakechat_api.FakeChat` keeps and accepts.

Internal to the test kit: the records (messages, reactions, deliveries) are re-exported by
:mod:`amoconnect.testing.fakechat_api`; the ``*Params`` Structs are the Bot API methods'
parameters, decoded strictly (an unknown field is a 400, as a typo in an adapter should be).
"""

from __future__ import annotations

import itertools
import mimetypes
from dataclasses import dataclass, field
from typing import Any, Final, NoReturn

import msgspec
from starlette.responses import JSONResponse

from ..model import MediaKind
from .fakes import ClientMedia

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
    "World",
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


class World:
    """fakechat's people, chats, posts and files, and the id counters."""

    def __init__(self) -> None:
        self.users: dict[str, User] = {}
        self.phones: dict[str, str] = {}
        self.posts: dict[str, PostRecord] = {}
        self.files: dict[str, StoredFile] = {}
        self.paths: dict[str, StoredFile] = {}
        self._ids = itertools.count(1)
        self._chat_ids = itertools.count(1001)

    def next_id(self) -> str:
        """A fresh id, unique across messages, files, comments and presses."""
        return str(next(self._ids))

    def user(self, chat: str, *, name: str | None = None, username: str | None = None) -> User:
        """The person of ``chat``, who joins on first use."""
        user = self.users.get(chat)
        if user is None:
            user = self.users[chat] = User(chat=chat, id=f"u{chat}", name=name or f"Client {chat}")
        if name is not None:
            user.name = name
        if username is not None:
            user.username = username
        return user

    def known(self, chat: str) -> User:
        """The person of ``chat``, who must have joined."""
        user = self.users.get(chat)
        if user is None:
            raise LookupError(f"fakechat has no chat {chat!r}: a client must write first (client_writes)")
        return user

    @staticmethod
    def message_in(user: User, message_id: Id) -> BotMessage | None:
        """The message ``message_id`` of the user's chat, if any."""
        return next((m for m in user.messages if m.message_id == str(message_id)), None)

    def register_phone(self, phone: str, *, name: str | None = None) -> str:
        """The chat of the person with ``phone``, who joins if new."""
        chat = self.phones.get(phone)
        if chat is None:
            chat = self.phones[phone] = str(next(self._chat_ids))
        self.user(chat, name=name).phone = phone
        return chat

    def add_post(self, post_id: str, *, caption: str = "", url: str | None = None) -> None:
        """Publish a post."""
        self.posts[post_id] = PostRecord(id=post_id, url=url or f"https://fakechat.test/p/{post_id}", caption=caption)

    def store_media(self, media: ClientMedia) -> dict[str, Any]:
        """Keep a client's file; its description in an update."""
        number = self.next_id()
        mime_type = media.mime_type or mimetypes.guess_type(media.file_name)[0] or "application/octet-stream"
        extension = media.file_name.rpartition(".")[2] if "." in media.file_name else "bin"
        stored = StoredFile(path=f"{media.kind}s/file_{number}.{extension}", content=media.content, mime_type=mime_type)
        file_id = f"F{number}"
        self.files[file_id] = self.paths[stored.path] = stored
        size = len(media.content)
        return {
            "kind": media.kind,
            "file_id": file_id,
            "file_name": media.file_name,
            "mime_type": mime_type,
            "size": size,
        }

    def content(
        self,
        user: User,
        message: BotMessage,
        media: ClientMedia | None,
        location: tuple[float, float] | None,
        contact: tuple[str, str] | None,
    ) -> dict[str, Any]:
        """The update body of a client's new or edited ``message``."""
        content: dict[str, Any] = {
            "message_id": message.message_id,
            "chat": {"id": user.chat},
            "from": user.as_from(),
            "date": message.date,
        }
        if message.text:
            content["text"] = message.text
        if media is not None:
            content["media"] = described = self.store_media(media)
            message.kind, message.file_id, message.file_name = media.kind, described["file_id"], media.file_name
        if location is not None:
            content["location"] = {"lat": location[0], "lon": location[1]}
        if contact is not None:
            content["contact"] = {"name": contact[0], "phone": contact[1]}
        if message.reply_to is not None:
            content["reply_to"] = message.reply_to
        return content
