"""The world behind :class:`~amoconnect_vk.fake.FakeVK`: people, dialogs, posts, files and what VK's JSON looks like.

Internal to the fake: records kept for inspection, the error texts VK answers with, parameter
specs of the methods the fake serves, keyboard rules and builders of the objects VK puts in
its events (validated against vkbottle-types in the plugin's tests).
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any, Final
from urllib.parse import parse_qsl

from starlette.requests import Request

from .vkapi import (
    INLINE_MAX_BUTTONS,
    INLINE_MAX_ROWS,
    KEYBOARD_MAX_BUTTONS,
    KEYBOARD_MAX_ROWS,
    MAX_BUTTONS_PER_ROW,
    MAX_LABEL_LENGTH,
    MAX_PAYLOAD_LENGTH,
)

__all__ = [
    "ERRORS",
    "EVENT_TYPES",
    "GLOBAL_PARAMS",
    "METHODS",
    "ApiCall",
    "ApiError",
    "CallbackServer",
    "Comment",
    "Delivery",
    "DialogMessage",
    "Fault",
    "Post",
    "StoredFile",
    "User",
    "check_keyboard",
    "event_id",
    "photo_object",
    "read_form",
]

ERRORS: Final[dict[int, str]] = {
    3: "Unknown method passed",
    5: "User authorization failed: invalid access_token (4).",
    6: "Too many requests per second",
    8: "Invalid request: v (version) is required",
    9: "Flood control",
    10: "Internal server error",
    12: "Unable to compile code",
    13: "Runtime error occurred during code invocation",
    14: "Captcha needed",
    15: "Access denied",
    18: "User was deleted or banned",
    27: "Group authorization failed: method is unavailable with group auth.",
    29: "Rate limit reached",
    100: "One of the parameters specified was missing or invalid",
    212: "Access to post comments denied",
    900: "Can't send messages for users from blacklist",
    901: "Can't send messages for users without permission",
    902: "Can't send messages to this user due to their privacy settings",
    911: "Keyboard format is invalid",
    914: "Message is too long",
    936: "Contact not found",
}
"""VK's ``error_msg`` of each code the fake answers with."""

EVENT_TYPES: Final = (
    "message_new",
    "message_reply",
    "message_edit",
    "message_allow",
    "message_deny",
    "message_read",
    "message_typing_state",
    "message_event",
    "message_reaction_event",
    "wall_post_new",
    "wall_repost",
    "wall_reply_new",
    "wall_reply_edit",
    "wall_reply_delete",
    "wall_reply_restore",
    "group_join",
    "group_leave",
)
"""Event types the fake knows (and the ``groups.set*Settings`` flags it accepts)."""

_FLAGS = {event: "bool" for event in EVENT_TYPES}

METHODS: Final[dict[str, dict[str, str]]] = {
    "groups.getById": {"group_id": "str", "group_ids": "str", "fields": "str"},
    "groups.getCallbackServers": {"group_id": "int!", "server_ids": "str"},
    "groups.addCallbackServer": {"group_id": "int!", "url": "str!", "title": "str!", "secret_key": "str"},
    "groups.editCallbackServer": {
        "group_id": "int!",
        "server_id": "int!",
        "url": "str!",
        "title": "str!",
        "secret_key": "str",
    },
    "groups.setCallbackSettings": {"group_id": "int!", "server_id": "int!", "api_version": "str", **_FLAGS},
    "groups.getCallbackConfirmationCode": {"group_id": "int!"},
    "groups.setLongPollSettings": {"group_id": "int!", "enabled": "bool", "api_version": "str", **_FLAGS},
    "groups.getLongPollServer": {"group_id": "int!"},
    "users.get": {"user_ids": "str", "fields": "str", "name_case": "str"},
    "messages.send": {
        "user_id": "int",
        "peer_id": "int",
        "peer_ids": "ints",
        "random_id": "int",
        "message": "str",
        "attachment": "str",
        "reply_to": "int",
        "forward": "str",
        "forward_messages": "str",
        "keyboard": "str",
        "payload": "str",
        "group_id": "int",
        "dont_parse_links": "bool",
        "disable_mentions": "bool",
        "lat": "float",
        "long": "float",
        "sticker_id": "int",
    },
    "messages.setActivity": {"peer_id": "int", "user_id": "int", "type": "str", "group_id": "int"},
    "messages.sendReaction": {"peer_id": "int!", "cmid": "int!", "reaction_id": "int!"},
    "messages.deleteReaction": {"peer_id": "int!", "cmid": "int!"},
    "photos.getMessagesUploadServer": {"peer_id": "int"},
    "photos.saveMessagesPhoto": {"photo": "str!", "server": "int", "hash": "str"},
    "docs.getMessagesUploadServer": {"type": "str", "peer_id": "int"},
    "docs.save": {"file": "str!", "title": "str", "tags": "str", "return_tags": "bool"},
    "wall.createComment": {
        "owner_id": "int",
        "post_id": "int!",
        "from_group": "int",
        "message": "str",
        "reply_to_comment": "int",
        "attachments": "str",
        "sticker_id": "int",
        "guid": "str",
    },
    "wall.getById": {"posts": "str!", "extended": "bool", "fields": "str"},
    "wall.getComments": {"owner_id": "int", "post_id": "int", "count": "int", "offset": "int"},
    "execute": {"code": "str!"},
}
"""Parameters of each method the fake serves: type, ``!`` when required. Unknown parameters are refused
(VK ignores them; the fake is stricter, to catch our own typos)."""

GLOBAL_PARAMS: Final = frozenset({"v", "access_token", "lang", "test_mode"})
"""Parameters every method takes."""


class ApiError(Exception):
    """Answer a call with VK's error envelope: ``code`` and (by default VK's) ``error_msg``."""

    def __init__(self, code: int, detail: str = "") -> None:
        message = ERRORS.get(code, "Unknown error")
        if detail:
            message = f"{message}: {detail}"
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(kw_only=True)
class Fault:
    """A failure injected with :meth:`FakeVK.fail_next`."""

    remaining: int
    code: int
    message: str | None = None
    method: str | None = None


@dataclass(frozen=True)
class ApiCall:
    """One call of the VK API: method, parameters as sent (token left out), the error code (0: success) and result."""

    method: str
    params: dict[str, str]
    error: int = 0
    via_execute: bool = False
    result: Any = None


@dataclass(frozen=True)
class Delivery:
    """One POST of the Callback API to a server; ``status`` is ``None`` when no answer came."""

    event_id: str
    url: str
    body: bytes
    headers: dict[str, str]
    status: int | None
    answer: str = ""


@dataclass
class User:
    """A VK user the fake knows; ``allowed`` says whether the community may write to them."""

    id: int
    first_name: str
    last_name: str = ""
    domain: str = ""
    allowed: bool = False
    blacklisted: bool = False
    closed_privacy: bool = False
    cmids: itertools.count[int] = field(default_factory=lambda: itertools.count(1), repr=False)

    def object(self, fields: set[str]) -> dict[str, Any]:
        """The user as ``users.get`` returns them."""
        found: dict[str, Any] = {
            "id": self.id,
            "first_name": self.first_name,
            "last_name": self.last_name,
            "can_access_closed": True,
            "is_closed": False,
        }
        if "domain" in fields:
            found["domain"] = self.domain or f"id{self.id}"
        if "photo_100" in fields:
            found["photo_100"] = f"https://sun9-1.userapi.com/avatar/{self.id}.jpg"
        return found


@dataclass
class DialogMessage:
    """A message of a private dialog, the client's or the community's."""

    peer_id: int
    cmid: int
    id: int
    from_id: int
    date: int
    text: str = ""
    attachments: list[dict[str, Any]] = field(default_factory=list)
    keyboard: dict[str, Any] | None = None
    reply_to: int | None = None
    """The ``conversation_message_id`` quoted."""
    random_id: int = 0
    payload: str | None = None
    fwd: list[int] = field(default_factory=list)
    geo: dict[str, Any] | None = None
    update_time: int | None = None
    reaction: int | None = None
    """The client's reaction on a community message."""
    admin_author_id: int | None = None
    """The admin who wrote a community message in VK's interface."""

    @property
    def out(self) -> bool:
        """True for the community's messages."""
        return self.from_id < 0


@dataclass
class Post:
    """A post on the community's wall."""

    owner_id: int
    id: int
    text: str
    date: int
    attachments: list[dict[str, Any]] = field(default_factory=list)

    @property
    def key(self) -> str:
        """``{owner}_{id}``."""
        return f"{self.owner_id}_{self.id}"


@dataclass
class Comment:
    """A comment under a post; ``from_id`` is negative for the community's."""

    id: int
    post: Post
    from_id: int
    text: str
    date: int
    reply_to_comment: int | None = None
    reply_to_user: int | None = None
    parents_stack: list[int] = field(default_factory=list)
    guid: str | None = None
    deleted: bool = False
    attachments: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class StoredFile:
    """A file the fake serves at ``/files/{id}``: a client's media or an upload."""

    id: int
    content: bytes
    name: str
    mime: str


@dataclass
class CallbackServer:
    """A Callback API server of the community (``groups.addCallbackServer`` or the settings page)."""

    id: int
    url: str
    title: str
    secret_key: str = ""
    status: str = "unconfigured"
    api_version: str = "5.199"
    events: set[str] = field(default_factory=set)


def event_id(number: int) -> str:
    """A VK-looking ``event_id`` (40 hex digits)."""
    return hashlib.sha1(f"fake-vk-event-{number}".encode()).hexdigest()


def photo_object(photo_id: int, owner_id: int, url: str, date: int, access_key: str = "") -> dict[str, Any]:
    """A photo as VK puts it in messages, comments and posts, with three sizes of one picture."""
    sizes = [
        {"height": 75, "type": "s", "width": 75, "url": f"{url}?size=s"},
        {"height": 604, "type": "x", "width": 604, "url": f"{url}?size=x"},
        {"height": 1280, "type": "z", "width": 1280, "url": url},
    ]
    photo: dict[str, Any] = {
        "album_id": -3,
        "date": date,
        "id": photo_id,
        "owner_id": owner_id,
        "sizes": sizes,
        "text": "",
        "has_tags": False,
    }
    if access_key:
        photo["access_key"] = access_key
    return photo


def _check_button(button: Any) -> None:
    action = button.get("action") if isinstance(button, dict) else None
    if not isinstance(action, dict) or not isinstance(action.get("label"), str):
        raise ApiError(911, "button action and label are required")
    label, kind = action["label"], action.get("type")
    if not label or len(label) > MAX_LABEL_LENGTH:
        raise ApiError(911, f"label must be 1-{MAX_LABEL_LENGTH} characters")
    if kind == "open_link":
        if not str(action.get("link", "")).startswith(("http://", "https://")):
            raise ApiError(911, "open_link needs a link")
    elif kind == "text":
        payload = action.get("payload")
        if payload is not None:
            if not isinstance(payload, str) or len(payload) > MAX_PAYLOAD_LENGTH:
                raise ApiError(911, f"payload must be a JSON string of at most {MAX_PAYLOAD_LENGTH} characters")
            try:
                json.loads(payload)
            except ValueError:
                raise ApiError(911, "payload is not JSON") from None
    else:
        raise ApiError(911, f"button type {kind!r} is not supported here")
    if set(button) - {"action", "color"} or set(action) - {"type", "label", "payload", "link"}:
        raise ApiError(911, "unknown keys in a button")


def check_keyboard(raw: str) -> dict[str, Any]:
    """The keyboard of a ``messages.send``, checked as VK checks it (error 911)."""
    try:
        keyboard = json.loads(raw)
    except ValueError:
        raise ApiError(911, "keyboard is not JSON") from None
    if not isinstance(keyboard, dict) or not isinstance(keyboard.get("buttons"), list):
        raise ApiError(911, "buttons are required")
    if set(keyboard) - {"one_time", "inline", "buttons"}:
        raise ApiError(911, "unknown keys in the keyboard")
    rows = keyboard["buttons"]
    inline = bool(keyboard.get("inline"))
    if inline and "one_time" in keyboard:
        raise ApiError(911, "an inline keyboard cannot be one_time")
    max_rows, max_buttons = (
        (INLINE_MAX_ROWS, INLINE_MAX_BUTTONS) if inline else (KEYBOARD_MAX_ROWS, KEYBOARD_MAX_BUTTONS)
    )
    if len(rows) > max_rows or sum(len(row) for row in rows if isinstance(row, list)) > max_buttons:
        raise ApiError(911, f"at most {max_rows} rows and {max_buttons} buttons")
    for row in rows:
        if not isinstance(row, list) or not 0 < len(row) <= MAX_BUTTONS_PER_ROW:
            raise ApiError(911, f"a row has 1-{MAX_BUTTONS_PER_ROW} buttons")
        for button in row:
            _check_button(button)
    return keyboard


async def read_form(request: Request) -> tuple[dict[str, str], dict[str, tuple[str, bytes, str]]]:
    """Query and body parameters (urlencoded or multipart) of a request, and its files by name."""
    params: dict[str, str] = dict(request.query_params)
    files: dict[str, tuple[str, bytes, str]] = {}
    body = await request.body()
    content_type = request.headers.get("content-type", "")
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
                files[name] = (filename, payload, part.get_content_type())
            else:
                params[name] = payload.decode()
    return params, files
