"""VK Callback API / Bots Long Poll events → neutral events. Pure logic: no IO.

One event becomes at most one neutral event, whose ``dedup_key`` is VK's ``event_id``, so a
retried delivery (``X-Retry-Counter``) or a duplicate is dropped by the core. Ids:

- a chat is VK's ``peer_id`` (a user's id in a private dialog), the sender ``from_id``;
- a message is its ``conversation_message_id`` (what ``message_reaction_event``,
  ``message_read`` and ``messages.sendReaction`` name); our sends return the same;
- a post is ``{owner_id}_{post_id}`` (:func:`~amoconnect_vk.vkapi.post_key`), a comment
  ``comment:{post}:{id}`` once stored, as the core names it.

VK's events name people only by id; names, posts and comment authors come from a
:class:`Memory` the adapter fills before it parses (``users.get``, earlier ``wall_post_new``
and ``wall_reply_new`` events kept in the instance's state).

``message_reply`` reports every outgoing message of the community, "a new outcoming message"
(VK API schema, ``groups.setCallbackSettings``): an admin's answer written in VK's own interface,
and each of our own ``messages.send``. Both become :class:`~amoconnect.model.InboundEcho`; ours
are marked by the ``random_id`` we sent ("ID used for sending messages. It returned only for
outgoing messages", ``messages_message``), kept in :attr:`Memory.sent`, and the core drops any
echo whose ``conversation_message_id`` it recorded for a send. ``admin_author_id`` ("Only for
messages from community. Contains user ID of community admin, who sent this message") names the
admin.
"""

from __future__ import annotations

import mimetypes
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import msgspec
from amoconnect.errors import NOT_JSON, WebhookError
from amoconnect.model import (
    Attachment,
    InboundComment,
    InboundEcho,
    InboundEdit,
    InboundEvent,
    InboundMessage,
    InboundReaction,
    InboundStatus,
    InboundTyping,
    Location,
    Person,
    Post,
)

from .vkapi import CHATS_FROM, REACTIONS, callback_data, post_key, post_url

__all__ = [
    "CommentDelete",
    "CommentInfo",
    "Event",
    "Foreign",
    "Memory",
    "Message",
    "Parsed",
    "PostInfo",
    "WallComment",
    "WallPost",
    "decode_event",
    "new_message",
    "parse_event",
    "person_from_user",
    "post_info",
]

_K = TypeVar("_K")
_V = TypeVar("_V")

_MAX_FORWARD_DEPTH = 3


class Event(msgspec.Struct, kw_only=True):
    """The envelope of every Callback API / Long Poll event."""

    type: str
    object: Any = None
    group_id: int = 0
    event_id: str = ""
    v: str = ""
    secret: str | None = None


class Foreign(msgspec.Struct, kw_only=True):
    """A quoted or forwarded message."""

    conversation_message_id: int = 0
    from_id: int = 0
    date: int = 0
    text: str = ""
    attachments: list[dict[str, Any]] = []
    fwd_messages: list[Foreign] = []
    geo: dict[str, Any] | None = None


class Message(Foreign, kw_only=True):
    """A private message (``messages_message``)."""

    id: int = 0
    peer_id: int = 0
    out: int | bool = 0
    payload: str | None = None
    reply_message: Foreign | None = None
    update_time: int | None = None
    random_id: int = 0
    admin_author_id: int | None = None


class _MessageNew(msgspec.Struct, kw_only=True):
    message: Message
    client_info: dict[str, Any] | None = None


class _Typing(msgspec.Struct, kw_only=True):
    state: str = ""
    from_id: int = 0
    to_id: int = 0


class _Reaction(msgspec.Struct, kw_only=True):
    reacted_id: int
    peer_id: int
    cmid: int
    reaction_id: int | None = None


class _Read(msgspec.Struct, kw_only=True):
    from_id: int = 0
    peer_id: int
    read_message_id: int = 0
    conversation_message_id: int


class WallPost(msgspec.Struct, kw_only=True):
    """A post on the community's wall (``wall_post_new``)."""

    id: int
    owner_id: int
    from_id: int = 0
    date: int = 0
    text: str = ""
    attachments: list[dict[str, Any]] = []


class WallComment(msgspec.Struct, kw_only=True):
    """A comment under a post (``wall_reply_new``, ``_edit``, ``_restore``)."""

    id: int
    from_id: int
    date: int = 0
    text: str = ""
    post_id: int = 0
    owner_id: int = 0
    post_owner_id: int | None = None
    reply_to_comment: int | None = None
    attachments: list[dict[str, Any]] = []

    @property
    def post(self) -> str:
        """Our id of the post."""
        return post_key(self.owner_id or self.post_owner_id or 0, self.post_id)


class CommentDelete(msgspec.Struct, kw_only=True):
    """``wall_reply_delete``: VK's schema names ``user_id``, VK sends ``deleter_id``; both are read."""

    id: int
    owner_id: int
    post_id: int
    deleter_id: int | None = None
    user_id: int | None = None

    @property
    def post(self) -> str:
        """Our id of the post."""
        return post_key(self.owner_id, self.post_id)


@dataclass(frozen=True)
class PostInfo:
    """What a comment tells amoCRM about its post."""

    caption: str | None = None
    preview_url: str | None = None


@dataclass(frozen=True)
class CommentInfo:
    """Who wrote a comment and what, kept to tell the manager when it is deleted."""

    from_id: int
    text: str = ""


class _Lru(OrderedDict[_K, _V], Generic[_K, _V]):
    """A dict that forgets its oldest entries past ``limit``."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def __setitem__(self, key: _K, value: _V) -> None:
        super().__setitem__(key, value)
        self.move_to_end(key)
        while len(self) > self.limit:
            self.popitem(last=False)


@dataclass
class Memory:
    """What the parser knows beyond one event: people, posts and comments, bounded in size."""

    limit: int = 10_000
    people: _Lru[int, Person] = field(init=False)
    posts: _Lru[str, PostInfo] = field(init=False)
    comments: _Lru[str, CommentInfo] = field(init=False)
    sent: _Lru[int, bool] = field(init=False)
    """The ``random_id`` of each ``messages.send`` of this process, recorded before the call."""

    def __post_init__(self) -> None:
        self.people = _Lru(self.limit)
        self.posts = _Lru(self.limit)
        self.comments = _Lru(self.limit)
        self.sent = _Lru(self.limit)

    def person(self, user_id: int) -> Person:
        """The person ``user_id``, with a name once ``users.get`` told it."""
        return self.people.get(user_id) or Person(id=str(user_id), profile_link=f"https://vk.com/id{user_id}")


@dataclass(frozen=True)
class Parsed:
    """The neutral events of one VK event, and why anything was skipped."""

    events: tuple[InboundEvent, ...] = ()
    skipped: str = ""


_decode = msgspec.json.Decoder(Event).decode


def decode_event(body: bytes) -> Event:
    """The envelope of a Callback API request; :class:`WebhookError` when it is not one."""
    try:
        return _decode(body)
    except (msgspec.DecodeError, *NOT_JSON) as exc:
        raise WebhookError(f"not a VK Callback API event: {exc}") from None


def person_from_user(user: dict[str, Any]) -> Person:
    """A neutral person from one ``users.get`` item."""
    user_id = int(user["id"])
    name = " ".join(str(part) for part in (user.get("first_name"), user.get("last_name")) if part)
    domain = user.get("domain") or user.get("screen_name")
    avatar = user.get("photo_100")
    return Person(
        id=str(user_id),
        name=name,
        avatar=avatar if isinstance(avatar, str) and avatar else None,
        username=str(domain) if domain else None,
        profile_link=f"https://vk.com/{domain or f'id{user_id}'}",
    )


# -- attachments ----------------------------------------------------------------------------------


def _largest(images: Any) -> str | None:
    best: tuple[int, str] | None = None
    for image in images if isinstance(images, list) else ():
        if isinstance(image, dict) and isinstance(image.get("url"), str) and image["url"]:
            area = int(image.get("width") or 0) * int(image.get("height") or 0)
            if best is None or area >= best[0]:
                best = (area, image["url"])
    return best[1] if best else None


def _photo_url(photo: dict[str, Any]) -> str | None:
    orig = photo.get("orig_photo")
    if isinstance(orig, dict) and isinstance(orig.get("url"), str):
        return str(orig["url"])
    return _largest(photo.get("sizes"))


def _doc(doc: dict[str, Any]) -> Attachment | None:
    url = doc.get("url")
    if not isinstance(url, str) or not url:
        return None
    ext = str(doc.get("ext") or "")
    name = str(doc.get("title") or "document")
    if ext and not name.lower().endswith(f".{ext.lower()}"):
        name = f"{name}.{ext}"
    size = doc.get("size")
    return Attachment(
        kind="file",
        fetch=url,
        file_name=name,
        size=size if isinstance(size, int) else None,
        mime_type=mimetypes.guess_type(name)[0],
    )


def _attachment(item: dict[str, Any]) -> Attachment | str | None:
    """One VK attachment: media to fetch, a line of text standing for it, or nothing."""
    kind = item.get("type")
    body = item.get(kind) if isinstance(kind, str) else None
    if not isinstance(kind, str) or not isinstance(body, dict):
        return None
    owner, number = body.get("owner_id"), body.get("id")
    if kind == "photo":
        url = _photo_url(body)
        name = f"photo{owner}_{number}.jpg"
        return Attachment(kind="picture", fetch=url, file_name=name, mime_type="image/jpeg") if url else "[photo]"
    if kind == "doc":
        return _doc(body) or f"[document] {body.get('title', '')}".strip()
    if kind == "audio_message":
        url = body.get("link_ogg") or body.get("link_mp3")
        if not isinstance(url, str) or not url:
            return "[voice message]"
        ogg = url == body.get("link_ogg")
        duration = body.get("duration")
        return Attachment(
            kind="voice",
            fetch=url,
            file_name=f"voice{owner}_{number}.{'ogg' if ogg else 'mp3'}",
            mime_type="audio/ogg" if ogg else "audio/mpeg",
            duration=float(duration) if isinstance(duration, int | float) else None,
        )
    if kind == "sticker":
        url = _largest(body.get("images")) or _largest(body.get("images_with_background"))
        name = f"sticker{body.get('sticker_id', '')}.png"
        return Attachment(kind="sticker", fetch=url, file_name=name, mime_type="image/png") if url else "[sticker]"
    if kind == "graffiti":
        url = body.get("url")
        return Attachment(kind="picture", fetch=url, file_name="graffiti.png") if isinstance(url, str) else None
    if kind == "video":
        return f"[video] {body.get('title', '')} https://vk.com/video{owner}_{number}".replace("  ", " ")
    if kind == "link":
        title = body.get("title")
        return f"{title}: {body.get('url', '')}" if title else str(body.get("url", ""))
    if kind == "wall":
        return f"[post] https://vk.com/wall{body.get('owner_id', body.get('to_id', body.get('from_id')))}_{number}"
    if kind == "audio":
        return f"[audio] {body.get('artist', '')} — {body.get('title', '')}"
    if kind == "poll":
        return f"[poll] {body.get('question', '')}"
    if kind == "market":
        return f"[product] {body.get('title', '')}"
    return f"[{kind.replace('_', ' ')}]"


def _convert(items: list[dict[str, Any]], text: str) -> tuple[list[Attachment], list[str]]:
    media: list[Attachment] = []
    lines: list[str] = []
    for item in items:
        converted = _attachment(item) if isinstance(item, dict) else None
        if isinstance(converted, Attachment):
            media.append(converted)
        elif converted and not (item.get("type") == "link" and str(item["link"].get("url")) in text):
            lines.append(converted)  # a link already in the text is VK's preview of it
    return media, lines


def _location(geo: dict[str, Any] | None) -> Location | None:
    coordinates = (geo or {}).get("coordinates")
    if isinstance(coordinates, dict):
        lat, lon = coordinates.get("latitude"), coordinates.get("longitude")
        if isinstance(lat, int | float) and isinstance(lon, int | float):
            return Location(lat=float(lat), lon=float(lon))
    return None


def _content(message: Foreign, depth: int = 0) -> tuple[str, list[Attachment]]:
    """Text and media of a message, with its forwarded messages folded in."""
    media, lines = _convert(message.attachments, message.text)
    parts = [message.text, *lines] if message.text else lines
    pure_forward = not message.text and not message.attachments
    if depth < _MAX_FORWARD_DEPTH:
        for forwarded in message.fwd_messages:
            text, more = _content(forwarded, depth + 1)
            media.extend(more)
            if text:
                parts.append(text if pure_forward else "» " + text.replace("\n", "\n» "))
    return "\n".join(parts), media


# -- events ---------------------------------------------------------------------------------------


def post_info(post: WallPost) -> PostInfo:
    """What comments under ``post`` tell amoCRM about it: its text and first picture."""
    preview = None
    for item in post.attachments:
        body = item.get("photo") if isinstance(item, dict) and item.get("type") == "photo" else None
        if isinstance(body, dict):
            preview = _photo_url(body)
            break
    return PostInfo(caption=post.text[:1000] or None, preview_url=preview)


def new_message(body: Any) -> Message:
    """The message of a ``message_new`` object: ``{"message", "client_info"}`` since API 5.103, the message before."""
    if isinstance(body, dict) and "message" not in body:
        return msgspec.convert(body, Message)  # a server set to an API version older than 5.103
    return msgspec.convert(body, _MessageNew).message


def _message(event: Event, memory: Memory, now: float) -> Parsed:
    message = new_message(event.object)
    if message.out or message.from_id <= 0:
        return Parsed(skipped="the community's own message")
    text, media = _content(message)
    reply = message.reply_message
    return Parsed(
        events=(
            InboundMessage(
                chat=str(message.peer_id),
                timestamp=float(message.date or now),
                dedup_key=event.event_id,
                sender=memory.person(message.from_id),
                message_id=str(message.conversation_message_id),
                text=text,
                attachments=tuple(media),
                location=_location(message.geo),
                callback_data=callback_data(message.payload),
                reply_to=str(reply.conversation_message_id) if reply and reply.conversation_message_id else None,
                forwarded=bool(message.fwd_messages) and not message.text and not message.attachments,
            ),
        )
    )


def _reply(event: Event, memory: Memory, now: float) -> Parsed:
    """``message_reply``: the community wrote to a client, in VK's interface or through the API."""
    message = msgspec.convert(event.object, Message)
    if not 0 < message.peer_id < CHATS_FROM:
        return Parsed(skipped="the community's message in a group chat")
    text, media = _content(message)
    reply = message.reply_message
    return Parsed(
        events=(
            InboundEcho(
                chat=str(message.peer_id),
                timestamp=float(message.date or now),
                dedup_key=event.event_id,
                client=memory.person(message.peer_id),
                message_id=str(message.conversation_message_id),
                text=text,
                attachments=tuple(media),
                location=_location(message.geo),
                reply_to=str(reply.conversation_message_id) if reply and reply.conversation_message_id else None,
                author=memory.person(message.admin_author_id) if message.admin_author_id else None,
                ours=bool(message.random_id) and message.random_id in memory.sent,
            ),
        )
    )


def _edit(event: Event, memory: Memory, now: float) -> Parsed:
    message = msgspec.convert(event.object, Message)
    if message.out or message.from_id <= 0:
        # The community's own message: the core relays an edit of a business message it imported.
        author = message.admin_author_id
        sender = memory.person(author) if author else Person(id=str(message.from_id))
    else:
        sender = memory.person(message.from_id)
    text, media = _content(message)
    return Parsed(
        events=(
            InboundEdit(
                chat=str(message.peer_id),
                timestamp=float(message.update_time or now),
                dedup_key=event.event_id,
                sender=sender,
                message_id=str(message.conversation_message_id),
                text=text,
                attachments=tuple(media),
                location=_location(message.geo),
            ),
        )
    )


def _comment(event: Event, memory: Memory, now: float) -> Parsed:
    comment = msgspec.convert(event.object, WallComment)
    if comment.from_id <= 0:
        return Parsed(skipped="a comment by a community")
    key = comment.post
    media, lines = _convert(comment.attachments, comment.text)
    text = "\n".join([comment.text, *lines] if comment.text else lines)
    sender = memory.person(comment.from_id)
    if event.type == "wall_reply_edit":
        edit = InboundEdit(
            chat=str(comment.from_id),
            timestamp=now,
            dedup_key=event.event_id,
            sender=sender,
            message_id=f"comment:{key}:{comment.id}",
            text=text,
            attachments=tuple(media),
        )
        return Parsed(events=(edit,))
    if event.type == "wall_reply_restore":
        note = f"[comment restored] {post_url(key)}" + (f": {text}" if text else "")
        return Parsed(events=(_note(event, comment.from_id, memory, now, note),))
    info = memory.posts.get(key) or PostInfo()
    post = Post(id=key, url=post_url(key), preview_url=info.preview_url, caption=info.caption)
    parent = comment.reply_to_comment
    return Parsed(
        events=(
            InboundComment(
                chat=str(comment.from_id),
                timestamp=float(comment.date or now),
                dedup_key=event.event_id,
                sender=sender,
                post=post,
                comment_id=str(comment.id),
                parent_id=str(parent) if parent else None,
                text=text,
                attachments=tuple(media),
            ),
        )
    )


def _note(event: Event, user_id: int, memory: Memory, now: float, text: str) -> InboundMessage:
    """A message to the manager about something that happened to the client's comment."""
    return InboundMessage(
        chat=str(user_id),
        timestamp=now,
        dedup_key=event.event_id,
        sender=memory.person(user_id),
        message_id=f"note:{event.event_id}",
        text=text,
    )


def _comment_deleted(event: Event, memory: Memory, now: float) -> Parsed:
    deleted = msgspec.convert(event.object, CommentDelete)
    key = deleted.post
    info = memory.comments.get(f"{key}_{deleted.id}")
    author = info.from_id if info else deleted.user_id
    if not author or author <= 0:
        return Parsed(skipped=f"comment {deleted.id} under {key} deleted; its author is unknown")
    text = f"[comment deleted] {post_url(key)}" + (f": «{info.text}»" if info and info.text else "")
    if deleted.deleter_id and deleted.deleter_id != author:
        text += " (deleted by the community)"
    return Parsed(events=(_note(event, author, memory, now, text),))


def _reaction(event: Event, memory: Memory, now: float) -> Parsed:
    reaction = msgspec.convert(event.object, _Reaction)
    if reaction.reacted_id <= 0:
        return Parsed(skipped="a reaction of the community")
    emoji = ""
    if reaction.reaction_id is not None:
        emoji = REACTIONS.get(reaction.reaction_id, "")
        if not emoji:
            return Parsed(skipped=f"VK reaction {reaction.reaction_id} has no emoji in the table")
    return Parsed(
        events=(
            InboundReaction(
                chat=str(reaction.peer_id),
                timestamp=now,
                dedup_key=event.event_id,
                sender=memory.person(reaction.reacted_id),
                message_id=str(reaction.cmid),
                emoji=emoji,
                removed=reaction.reaction_id is None,
            ),
        )
    )


def _typing(event: Event, memory: Memory, now: float) -> Parsed:
    typing = msgspec.convert(event.object, _Typing)
    if typing.state not in ("typing", "audiomessage") or typing.from_id <= 0:
        return Parsed(skipped=f"typing state {typing.state!r}")
    sender = memory.person(typing.from_id)
    return Parsed(events=(InboundTyping(chat=sender.id, timestamp=now, dedup_key=event.event_id, sender=sender),))


def _read(event: Event, memory: Memory, now: float) -> Parsed:
    read = msgspec.convert(event.object, _Read)
    if read.from_id < 0:
        return Parsed(skipped="the community read the dialog")
    status = InboundStatus(
        chat=str(read.peer_id),
        timestamp=now,
        dedup_key=event.event_id,
        message_id=str(read.conversation_message_id),
        status="read",
    )
    return Parsed(events=(status,))


_PARSERS = {
    "message_new": _message,
    "message_reply": _reply,
    "message_edit": _edit,
    "message_typing_state": _typing,
    "message_reaction_event": _reaction,
    "message_read": _read,
    "wall_reply_new": _comment,
    "wall_reply_edit": _comment,
    "wall_reply_restore": _comment,
    "wall_reply_delete": _comment_deleted,
}


def parse_event(event: Event, memory: Memory, *, now: float) -> Parsed:
    """The neutral events of one VK event; :class:`WebhookError` when its object has the wrong shape."""
    parser = _PARSERS.get(event.type)
    if parser is None:
        return Parsed(skipped=f"event {event.type!r} carries nothing for amoCRM")
    if not event.event_id:
        raise WebhookError(f"VK event {event.type!r} without event_id")
    try:
        return parser(event, memory, now)
    except msgspec.ValidationError as exc:
        raise WebhookError(f"VK event {event.type!r} of an unexpected shape: {exc}") from None
