"""Telegram updates → neutral events. Pure logic: no IO, no clock but the one passed in.

:func:`parse_update` decodes one ``Update`` (the subset of its types the relay needs, unknown
fields ignored) and returns the neutral events it carries plus the :data:`Effect` s the adapter
performs in the background: answering a button press, remembering that a client blocked the bot.

- ``message`` → :class:`~amoconnect.model.InboundMessage` (text or caption, the largest photo
  size, document, video, animation, voice, audio, video note, sticker, location, venue, contact,
  the quoted message, whether it was forwarded); ``edited_message`` →
  :class:`~amoconnect.model.InboundEdit`. Media become attachments with a ``fetch`` handle, the
  ``file_id``: the download URL embeds the bot token and never leaves the adapter. A file over
  the 20 MB bots may download becomes a note in the text instead.
- ``callback_query`` → an :class:`~amoconnect.model.InboundMessage` with ``callback_data`` and
  the pressed button's text, plus :class:`AnswerCallback`.
- ``message_reaction`` → one :class:`~amoconnect.model.InboundReaction` per emoji removed, then
  per emoji added (custom and paid reactions are skipped).
- ``my_chat_member`` → :class:`ChatBlocked` (``kicked``/``left``: blocked; ``member``: unblocked).

Every event's ``dedup_key`` is the ``update_id``; a reaction update that yields several events
suffixes the later ones (``"17.1"``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec
from amoconnect.errors import NOT_JSON, WebhookError
from amoconnect.model import (
    Attachment,
    Contact,
    InboundEdit,
    InboundEvent,
    InboundMessage,
    InboundReaction,
    Location,
    MediaKind,
    Person,
)

from .botapi import DOWNLOAD_LIMIT

__all__ = [
    "PRESS_PREFIX",
    "AnswerCallback",
    "ChatBlocked",
    "Effect",
    "Parsed",
    "Update",
    "decode_update",
    "parse_update",
]

PRESS_PREFIX = "cb"
"""A button press's ``message_id`` is this and the ``callback_query`` id."""


# -- the subset of Bot API types the relay reads ----------------------------------------------------


class _Type(msgspec.Struct, frozen=True, kw_only=True):
    pass


class _User(_Type, frozen=True):
    id: int
    is_bot: bool = False
    first_name: str = ""
    last_name: str | None = None
    username: str | None = None


class _Chat(_Type, frozen=True):
    id: int
    type: str = "private"
    title: str | None = None
    username: str | None = None
    first_name: str | None = None
    last_name: str | None = None


class _File(_Type, frozen=True):
    file_id: str
    file_size: int | None = None


class _PhotoSize(_File, frozen=True):
    width: int = 0
    height: int = 0


class _Document(_File, frozen=True):
    file_name: str | None = None
    mime_type: str | None = None


class _Video(_Document, frozen=True):
    duration: float | None = None


class _Audio(_Video, frozen=True):
    performer: str | None = None
    title: str | None = None


class _Voice(_File, frozen=True):
    duration: float | None = None
    mime_type: str | None = None


class _VideoNote(_File, frozen=True):
    duration: float | None = None


class _Sticker(_File, frozen=True):
    is_animated: bool = False
    is_video: bool = False
    emoji: str | None = None


class _GeoPoint(_Type, frozen=True):
    latitude: float
    longitude: float


class _Venue(_Type, frozen=True):
    location: _GeoPoint
    title: str = ""
    address: str = ""


class _SharedContact(_Type, frozen=True):
    phone_number: str
    first_name: str = ""
    last_name: str | None = None


class _InlineButton(_Type, frozen=True):
    text: str = ""
    callback_data: str | None = None


class _InlineKeyboard(_Type, frozen=True):
    inline_keyboard: list[list[_InlineButton]] = []


class _Message(_Type, frozen=True):
    message_id: int
    chat: _Chat
    date: int = 0
    sender: _User | None = msgspec.field(default=None, name="from")
    sender_chat: _Chat | None = None
    text: str | None = None
    caption: str | None = None
    photo: list[_PhotoSize] = []
    animation: _Video | None = None
    document: _Document | None = None
    video: _Video | None = None
    voice: _Voice | None = None
    audio: _Audio | None = None
    video_note: _VideoNote | None = None
    sticker: _Sticker | None = None
    location: _GeoPoint | None = None
    venue: _Venue | None = None
    contact: _SharedContact | None = None
    reply_to_message: _Message | None = None
    forward_origin: dict[str, Any] | None = None
    edit_date: int | None = None
    reply_markup: _InlineKeyboard | None = None
    poll: dict[str, Any] | None = None
    dice: dict[str, Any] | None = None
    game: dict[str, Any] | None = None
    story: dict[str, Any] | None = None
    paid_media: dict[str, Any] | None = None
    checklist: dict[str, Any] | None = None


class _CallbackQuery(_Type, frozen=True):
    id: str
    sender: _User = msgspec.field(name="from")
    message: _Message | None = None
    data: str | None = None


class _ReactionType(_Type, frozen=True):
    type: str
    emoji: str | None = None


class _MessageReactionUpdated(_Type, frozen=True):
    chat: _Chat
    message_id: int
    user: _User | None = None
    actor_chat: _Chat | None = None
    date: int = 0
    old_reaction: list[_ReactionType] = []
    new_reaction: list[_ReactionType] = []


class _ChatMember(_Type, frozen=True):
    status: str


class _ChatMemberUpdated(_Type, frozen=True):
    chat: _Chat
    new_chat_member: _ChatMember
    date: int = 0


class Update(_Type, frozen=True):
    """One Bot API ``Update``: its id and the one kind of content the relay reads, if any."""

    update_id: int
    message: _Message | None = None
    edited_message: _Message | None = None
    callback_query: _CallbackQuery | None = None
    message_reaction: _MessageReactionUpdated | None = None
    my_chat_member: _ChatMemberUpdated | None = None


_decode = msgspec.json.Decoder(Update).decode


def decode_update(body: bytes | str) -> Update:
    """Decode a JSON update; :class:`~amoconnect.errors.WebhookError` when it is not one."""
    try:
        return _decode(body)
    except (msgspec.DecodeError, *NOT_JSON) as exc:
        raise WebhookError(f"not a Telegram update: {exc}") from exc


# -- effects ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AnswerCallback:
    """Answer button press ``query_id`` (``answerCallbackQuery``), so that the client's spinner stops.

    ``text``, when set, is shown to the client as an alert (a button that expired says so).
    """

    query_id: str
    text: str | None = None


@dataclass(frozen=True)
class ChatBlocked:
    """The client of ``chat`` blocked the bot (or removed it from a group), or, ``blocked=False``, came back."""

    chat: str
    blocked: bool


Effect = AnswerCallback | ChatBlocked
"""Work an update asks for beyond storing its events."""


@dataclass(frozen=True)
class Parsed:
    """What one update yields."""

    events: tuple[InboundEvent, ...] = ()
    effects: tuple[Effect, ...] = ()


# -- conversion ---------------------------------------------------------------------------------------

_UNSUPPORTED = ("poll", "dice", "game", "story", "paid_media", "checklist")
_GONE_STATUSES = frozenset({"kicked", "left"})


def _person(user: _User | None, chat: _Chat) -> Person:
    if user is not None:
        name = " ".join(part for part in (user.first_name, user.last_name) if part)
        username = user.username
        return Person(
            id=str(user.id),
            name=name or username or str(user.id),
            username=username,
            profile_link=f"https://t.me/{username}" if username else None,
        )
    name = chat.title or " ".join(part for part in (chat.first_name, chat.last_name) if part)
    return Person(id=str(chat.id), name=name or str(chat.id), username=chat.username)


def _attachment(
    kind: MediaKind, file: _File, *, file_name: str | None = None, mime_type: str | None = None, duration: float | None
) -> Attachment:
    return Attachment(
        kind=kind,
        fetch=file.file_id,
        file_name=file_name or "",
        size=file.file_size,
        mime_type=mime_type,
        duration=duration,
    )


def _media(message: _Message) -> tuple[Attachment | None, str]:
    """The message's attachment, or a note saying why it is missing."""
    attachment: Attachment | None = None
    if message.photo:
        largest = max(message.photo, key=lambda size: (size.width * size.height, size.file_size or 0))
        attachment = _attachment("picture", largest, mime_type="image/jpeg", duration=None)
    elif message.animation is not None:
        a = message.animation
        attachment = _attachment("video", a, file_name=a.file_name, mime_type=a.mime_type, duration=a.duration)
    elif message.video is not None:
        v = message.video
        attachment = _attachment("video", v, file_name=v.file_name, mime_type=v.mime_type, duration=v.duration)
    elif message.video_note is not None:
        attachment = _attachment(
            "video",
            message.video_note,
            file_name="video_note.mp4",
            mime_type="video/mp4",
            duration=message.video_note.duration,
        )
    elif message.voice is not None:
        vo = message.voice
        attachment = _attachment("voice", vo, mime_type=vo.mime_type, duration=vo.duration)
    elif message.audio is not None:
        au = message.audio
        attachment = _attachment("audio", au, file_name=au.file_name, mime_type=au.mime_type, duration=au.duration)
    elif message.sticker is not None:
        st = message.sticker
        name, mime = (
            ("sticker.tgs", "application/x-tgsticker")
            if st.is_animated
            else ("sticker.webm", "video/webm")
            if st.is_video
            else ("sticker.webp", "image/webp")
        )
        attachment = _attachment("sticker", st, file_name=name, mime_type=mime, duration=None)
    elif message.document is not None:
        d = message.document
        attachment = _attachment("file", d, file_name=d.file_name, mime_type=d.mime_type, duration=None)
    if attachment is not None and attachment.size is not None and attachment.size > DOWNLOAD_LIMIT:
        megabytes = attachment.size / (1024 * 1024)
        label = attachment.file_name or attachment.kind
        return None, f"[{label}, {megabytes:.0f} MB: over the 20 MB Telegram lets bots download; not relayed]"
    return attachment, ""


def _content(message: _Message) -> dict[str, Any] | None:
    """The neutral content fields of a message; ``None`` for a service message with nothing to relay."""
    text = message.text or message.caption or ""
    attachment, note = _media(message)
    location = None
    contact = None
    if message.venue is not None:
        venue = message.venue
        location = Location(lat=venue.location.latitude, lon=venue.location.longitude)
        text = "\n".join(part for part in (venue.title, venue.address, text) if part)
    elif message.location is not None:
        location = Location(lat=message.location.latitude, lon=message.location.longitude)
    if message.contact is not None:
        c = message.contact
        name = " ".join(part for part in (c.first_name, c.last_name) if part)
        contact = Contact(name=name or c.phone_number, phone=c.phone_number)
    if note:
        text = f"{text}\n{note}" if text else note
    if not (text or attachment or location or contact):
        kind = next((kind for kind in _UNSUPPORTED if getattr(message, kind) is not None), None)
        if kind is None:
            return None
        text = f"[Telegram {kind.replace('_', ' ')}: not supported by amoCRM]"
    return {
        "text": text,
        "attachments": (attachment,) if attachment is not None else (),
        "location": location,
        "contact": contact,
    }


def _message(update_id: int, message: _Message, *, edit: bool) -> InboundEvent | None:
    content = _content(message)
    if content is None:
        return None
    common: dict[str, Any] = dict(
        chat=str(message.chat.id),
        dedup_key=str(update_id),
        sender=_person(message.sender, message.sender_chat or message.chat),
        message_id=str(message.message_id),
        **content,
    )
    if edit:
        return InboundEdit(timestamp=float(message.edit_date or message.date), **common)
    reply_to = message.reply_to_message
    return InboundMessage(
        timestamp=float(message.date),
        reply_to=str(reply_to.message_id) if reply_to is not None else None,
        forwarded=message.forward_origin is not None,
        **common,
    )


def _button_text(message: _Message | None, data: str) -> str:
    if message is not None and message.reply_markup is not None:
        for row in message.reply_markup.inline_keyboard:
            for button in row:
                if button.callback_data == data:
                    return button.text
    return data


def _callback(update_id: int, query: _CallbackQuery, now: float) -> Parsed:
    answer = AnswerCallback(query.id)
    if query.data is None:  # a game button: nothing to relay
        return Parsed(effects=(answer,))
    chat = str(query.message.chat.id) if query.message is not None else str(query.sender.id)
    event = InboundMessage(
        chat=chat,
        timestamp=now,
        dedup_key=str(update_id),
        sender=_person(query.sender, query.message.chat if query.message is not None else _Chat(id=query.sender.id)),
        message_id=PRESS_PREFIX + query.id,
        text=_button_text(query.message, query.data),
        callback_data=query.data,
    )
    return Parsed(events=(event,), effects=(answer,))


def _reactions(update_id: int, reaction: _MessageReactionUpdated) -> Parsed:
    old = [r.emoji for r in reaction.old_reaction if r.type == "emoji" and r.emoji]
    new = [r.emoji for r in reaction.new_reaction if r.type == "emoji" and r.emoji]
    removed = [(emoji, True) for emoji in old if emoji not in new]
    changes = removed + [(emoji, False) for emoji in new if emoji not in old]
    sender = _person(reaction.user, reaction.actor_chat or reaction.chat)
    events = tuple(
        InboundReaction(
            chat=str(reaction.chat.id),
            timestamp=float(reaction.date),
            dedup_key=str(update_id) if index == 0 else f"{update_id}.{index}",
            sender=sender,
            message_id=str(reaction.message_id),
            emoji=emoji,
            removed=removed,
        )
        for index, (emoji, removed) in enumerate(changes)
    )
    return Parsed(events=events)


def parse_update(update: Update, *, now: float) -> Parsed:
    """The events and effects of ``update``; ``now`` (unix seconds) stamps button presses, which carry no date."""
    if update.message is not None:
        event = _message(update.update_id, update.message, edit=False)
        return Parsed(events=(event,) if event is not None else ())
    if update.edited_message is not None:
        event = _message(update.update_id, update.edited_message, edit=True)
        return Parsed(events=(event,) if event is not None else ())
    if update.callback_query is not None:
        return _callback(update.update_id, update.callback_query, now)
    if update.message_reaction is not None:
        return _reactions(update.update_id, update.message_reaction)
    if update.my_chat_member is not None:
        member = update.my_chat_member
        status = member.new_chat_member.status
        if status in _GONE_STATUSES:
            return Parsed(effects=(ChatBlocked(str(member.chat.id), True),))
        if status in ("member", "administrator"):
            return Parsed(effects=(ChatBlocked(str(member.chat.id), False),))
    return Parsed()
