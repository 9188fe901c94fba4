"""The neutral message model between amoCRM and every messenger.

The core translates amojo ↔ these types; a messenger adapter translates its messenger ↔ these
types. Neither side sees the other's wire format. Every type is a frozen ``msgspec.Struct``
that round-trips through JSON, so the store keeps events and sends as job payloads::

    msgspec.json.decode(payload, type=InboundEvent)

Conventions:

- ids are strings, as the messenger spells them (``str(update.message.message_id)``);
- ``chat`` is always the messenger's chat id, the place a reply goes;
- ``timestamp`` is unix time in seconds as a ``float`` (milliseconds in the fraction);
- ``dedup_key`` is the messenger's own idempotency key (Telegram ``update_id``, WhatsApp
  ``wamid`` plus status, VK ``event_id``), unique per adapter instance; the core drops a
  second event with the same key.

Inbound events (messenger → core) form the tagged union :data:`InboundEvent`, sends (core →
messenger) the tagged union :data:`OutgoingEvent`; the tag is the ``"type"`` field. One inbound
event goes the other way: :class:`InboundEcho`, a message the business wrote outside amoCRM.
"""

from __future__ import annotations

from typing import Final, Literal, get_args

import msgspec

__all__ = [
    "FAILURE_REASONS",
    "Attachment",
    "Button",
    "Contact",
    "Conversation",
    "DeliveryStatus",
    "FailureReason",
    "HistoryEntry",
    "InboundComment",
    "InboundEcho",
    "InboundEdit",
    "InboundEvent",
    "InboundMessage",
    "InboundReaction",
    "InboundStatus",
    "InboundTyping",
    "ListMessage",
    "ListRow",
    "ListSection",
    "Location",
    "MediaKind",
    "MessageRef",
    "OutgoingCommentReply",
    "OutgoingEvent",
    "OutgoingMessage",
    "OutgoingReaction",
    "OutgoingTyping",
    "Person",
    "Post",
    "SendResult",
    "Template",
    "TemplateParam",
]

MediaKind = Literal["picture", "video", "file", "voice", "audio", "sticker"]
"""Kinds of media, named as amojo names its message types."""

DeliveryStatus = Literal["sent", "delivered", "read", "failed"]
"""How far a message got; statuses only move forward (``failed`` is final)."""

FailureReason = Literal["blocked", "disabled", "no_chat", "window_closed", "rate_limited", "other"]
"""Why a message failed, in words every messenger can map to (see :data:`FAILURE_REASONS`)."""

FAILURE_REASONS: Final[frozenset[str]] = frozenset(get_args(FailureReason))
"""The neutral failure vocabulary, shared by :class:`InboundStatus` and ``MessengerError.reason``:
``blocked`` the user blocked us or deleted the chat · ``disabled`` the bot, number or community
is disabled on the messenger · ``no_chat`` the chat cannot be created (no such user or number)
· ``window_closed`` the reply window is closed · ``rate_limited`` the messenger throttled us
· ``other`` anything else (the messenger's text says what)."""


class _Data(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Base of every value type of the model."""


# -- parts -------------------------------------------------------------------------------------


class Person(_Data, frozen=True):
    """A messenger user: the client who writes, reacts or comments."""

    id: str
    """The messenger's user id."""
    name: str = ""
    """Display name."""
    avatar: str | None = None
    """URL of the profile picture."""
    phone: str | None = None
    """Phone number, when the messenger shares it."""
    email: str | None = None
    """E-mail address, when the messenger shares it."""
    username: str | None = None
    """Public handle (``@name``), without the ``@``."""
    profile_link: str | None = None
    """URL of the user's public profile."""


class Attachment(_Data, frozen=True):
    """One piece of media; exactly one of ``url`` and ``fetch`` tells where its bytes are."""

    kind: MediaKind
    """What the media is."""
    url: str | None = None
    """A URL the core may download the bytes from."""
    fetch: str | None = None
    """An opaque handle the adapter's ``fetch_media`` turns into bytes (a file id behind a token)."""
    file_name: str = ""
    """File name to show; the core derives one when empty."""
    size: int | None = None
    """Size in bytes, when known."""
    mime_type: str | None = None
    """MIME type, when known."""
    duration: float | None = None
    """Length in seconds of voice, audio and video."""

    def __post_init__(self) -> None:
        if (self.url is None) == (self.fetch is None):
            raise ValueError("an Attachment needs exactly one of url and fetch")


class Location(_Data, frozen=True):
    """A point on the map."""

    lat: float
    """Latitude in degrees."""
    lon: float
    """Longitude in degrees."""


class Contact(_Data, frozen=True):
    """A contact card the client shared."""

    name: str
    """Name on the card."""
    phone: str
    """Phone number on the card."""


class Post(_Data, frozen=True):
    """A public post that comments belong to."""

    id: str
    """The messenger's post id."""
    url: str
    """Public link to the post."""
    preview_url: str | None = None
    """URL of a picture that stands for the post."""
    caption: str | None = None
    """The post's text, or its start."""


class Button(_Data, frozen=True):
    """An inline button: opens ``url``, or sends ``callback_data`` back as an inbound message."""

    text: str
    """Label."""
    url: str | None = None
    """Link the button opens."""
    callback_data: str | None = None
    """Data that comes back in :attr:`InboundMessage.callback_data` when pressed."""


class ListRow(_Data, frozen=True):
    """One choice of a list message."""

    callback_data: str
    """Comes back in :attr:`InboundMessage.callback_data` when the row is chosen."""
    title: str
    """Row title."""
    description: str = ""
    """Smaller text under the title."""


class ListSection(_Data, frozen=True):
    """A titled group of rows in a list message."""

    title: str
    """Section title."""
    rows: tuple[ListRow, ...]
    """The choices."""


class ListMessage(_Data, frozen=True):
    """A menu the client opens with a button and picks one row from (WhatsApp List Message)."""

    body: str
    """Main text."""
    button: str
    """Label of the button that opens the list."""
    sections: tuple[ListSection, ...]
    """Groups of rows."""
    header: str = ""
    """Text above the body."""
    footer: str = ""
    """Text below the body."""


class TemplateParam(_Data, frozen=True):
    """A value for one ``{{marker}}`` of a template."""

    key: str
    """The marker, as written in the template content."""
    value: str
    """Its value."""


class Template(_Data, frozen=True):
    """An amoCRM chat template, sent where the messenger requires pre-approved messages."""

    id: str
    """amoCRM's template id."""
    content: str
    """Text with ``{{markers}}``, for messengers that take plain text."""
    external_id: str | None = None
    """The messenger's name for the template (a WhatsApp template name)."""
    params: tuple[TemplateParam, ...] = ()
    """Values of the markers, in order."""


# -- inbound: messenger → core -----------------------------------------------------------------


class _Inbound(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, tag_field="type"):
    """Fields every inbound event carries."""

    chat: str
    """The messenger's chat id."""
    timestamp: float
    """When it happened, unix seconds."""
    dedup_key: str
    """The messenger's idempotency key for this event."""


class _InboundContent(_Inbound, frozen=True):
    """A message's content: what a new message and an edit carry."""

    sender: Person
    """Who wrote it."""
    message_id: str
    """The messenger's id of the message."""
    text: str = ""
    """Text, or the caption of the attachments."""
    attachments: tuple[Attachment, ...] = ()
    """Media, in order."""
    location: Location | None = None
    """A shared location."""
    contact: Contact | None = None
    """A shared contact card."""


class InboundMessage(_InboundContent, frozen=True, tag="message"):
    """A new message from the client."""

    callback_data: str | None = None
    """Set when the message is a button press or a list row choice: that button's or row's data."""
    reply_to: str | None = None
    """The messenger's id of the message this one quotes."""
    forwarded: bool = False
    """True when the client forwarded the message from elsewhere."""


class InboundEdit(_InboundContent, frozen=True, tag="edit"):
    """The client edited a message: ``message_id`` names it, the content is its new content."""


class InboundStatus(_Inbound, frozen=True, tag="status"):
    """A message we sent moved on: delivered, read or failed."""

    message_id: str
    """The messenger's id of the message (as returned in :attr:`SendResult.message_ids`)."""
    status: DeliveryStatus
    """Its new status."""
    reason: FailureReason | None = None
    """Why it failed; set when ``status`` is ``"failed"``."""
    error_code: str | None = None
    """The messenger's own error code."""
    error: str = ""
    """The messenger's own error text."""


class InboundReaction(_Inbound, frozen=True, tag="reaction"):
    """The client set or removed a reaction."""

    sender: Person
    """Who reacted."""
    message_id: str
    """The messenger's id of the message reacted to."""
    emoji: str = ""
    """The emoji; may be empty when ``removed``."""
    removed: bool = False
    """True when the reaction was taken back."""


class InboundTyping(_Inbound, frozen=True, tag="typing"):
    """The client is typing."""

    sender: Person
    """Who is typing."""


class InboundComment(_Inbound, frozen=True, tag="comment"):
    """The client commented on a public post.

    ``chat`` is the commenter's private chat, so that comments and private messages of one
    person meet in one amoCRM chat (one thread per post).
    """

    sender: Person
    """Who commented."""
    post: Post
    """The post commented on."""
    comment_id: str
    """The messenger's id of the comment."""
    parent_id: str | None = None
    """The comment this one answers, when it is a reply in a thread."""
    text: str = ""
    """The comment's text."""
    attachments: tuple[Attachment, ...] = ()
    """Media in the comment."""


class InboundEcho(_Inbound, frozen=True, tag="echo"):
    """A message the business sent to the client outside amoCRM (capability ``echoes``).

    A community admin answering in VK's own interface, the owner answering from the WhatsApp
    Business app: the messenger reports the message, and the core imports it into the amoCRM chat
    as the channel bot's (or as the amoCRM user the source's ``authors`` maps :attr:`author` to),
    without notifying managers. Messengers report amoconnect's own sends the same way: the core
    drops an echo whose :attr:`message_id` it has recorded for a send (waiting briefly for a send
    still recording its result), and one the adapter marks :attr:`ours`.
    """

    client: Person
    """The client the message went to (the chat's person)."""
    message_id: str
    """The messenger's id of the message."""
    text: str = ""
    """Text, or the caption of the attachments."""
    attachments: tuple[Attachment, ...] = ()
    """Media, in order."""
    location: Location | None = None
    """A shared location."""
    contact: Contact | None = None
    """A shared contact card."""
    reply_to: str | None = None
    """The messenger's id of the message this one quotes."""
    author: Person | None = None
    """Who of the business wrote it, when the messenger says (VK's ``admin_author_id``)."""
    ours: bool = False
    """True when the adapter recognises one of amoconnect's own sends by the idempotency key it
    sent (VK's ``random_id``): the core drops it without waiting for the id mapping."""


InboundEvent = (
    InboundMessage | InboundEdit | InboundStatus | InboundReaction | InboundTyping | InboundComment | InboundEcho
)
"""Anything an adapter reports (tagged by ``"type"``)."""


# -- outgoing: core → messenger ----------------------------------------------------------------


class _Outgoing(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, tag_field="type"):
    """Base of every send."""


class OutgoingMessage(_Outgoing, frozen=True, tag="message"):
    """A message to the client.

    The target is ``chat``, or, to write first (capability ``write_first``), ``phone`` with no
    chat: the adapter opens the chat and returns its id in :attr:`SendResult.chat`. Buttons,
    list messages, templates and replies are only set when the adapter declares the capability.
    """

    chat: str | None = None
    """The messenger's chat id."""
    phone: str | None = None
    """Phone number to write first to, instead of ``chat``."""
    dedup_key: str = ""
    """Stable across retries of this send; messengers with send idempotency (VK ``random_id``) derive theirs from it."""
    text: str = ""
    """Text, or the caption of the attachments."""
    attachments: tuple[Attachment, ...] = ()
    """Media to send, each with a ``url``."""
    buttons: tuple[tuple[Button, ...], ...] = ()
    """Inline buttons, row by row."""
    list_message: ListMessage | None = None
    """A list menu to send instead of plain text."""
    template: Template | None = None
    """A template to send instead of free text."""
    reply_to: str | None = None
    """The messenger's id of the message to quote."""
    media_group_id: str | None = None
    """Shared by messages that amoCRM sent as one album."""

    def __post_init__(self) -> None:
        if (self.chat is None) == (self.phone is None):
            raise ValueError("an OutgoingMessage needs exactly one of chat and phone")


class OutgoingCommentReply(_Outgoing, frozen=True, tag="comment_reply"):
    """A public answer under a comment (capability ``comments``); text only."""

    chat: str
    """The commenter's private chat (as in :attr:`InboundComment.chat`)."""
    post_id: str
    """The post the comment is under."""
    comment_id: str
    """The comment answered."""
    text: str
    """The answer."""
    dedup_key: str = ""
    """Stable across retries of this send (VK's ``guid``)."""


class OutgoingReaction(_Outgoing, frozen=True, tag="reaction"):
    """Set or remove our reaction on a message (capability ``reactions``)."""

    chat: str
    """The messenger's chat id."""
    message_id: str
    """The messenger's id of the message to react to."""
    emoji: str = ""
    """The emoji, one the adapter's ``reactions`` allows; empty when ``removed``."""
    removed: bool = False
    """True to take our reaction back."""


class OutgoingTyping(_Outgoing, frozen=True, tag="typing"):
    """Show that the manager is typing (capability ``typing``)."""

    chat: str
    """The messenger's chat id."""
    until: float
    """Unix seconds when the indicator should stop; the adapter repeats its call as the messenger needs."""
    post_id: str | None = None
    """Set when the manager types in a post's comment thread."""


OutgoingEvent = OutgoingMessage | OutgoingCommentReply | OutgoingReaction | OutgoingTyping
"""Anything the core asks an adapter to send (tagged by ``"type"``)."""


class SendResult(_Data, frozen=True):
    """What a send produced."""

    message_ids: tuple[str, ...]
    """The messenger's ids of the messages created (one send may become several)."""
    status: Literal["sent", "delivered"] = "sent"
    """``delivered`` when the messenger confirms delivery synchronously."""
    chat: str | None = None
    """The chat id, when the send opened a chat (write first)."""


# -- references the hooks get ------------------------------------------------------------------


class Conversation(_Data, frozen=True):
    """One client chat of one adapter instance, as the core knows it."""

    id: str
    """Our conversation id (amojo's ``conversation_id``)."""
    messenger: str
    """The adapter's name (``MessengerAdapter.name``)."""
    instance: str
    """The adapter instance (one bot, one phone number)."""
    chat: str
    """The messenger's chat id."""
    amocrm_chat_id: str | None = None
    """amoCRM's id of the chat, once known."""
    source: str | None = None
    """The amoCRM source's ``external_id``."""


class MessageRef(_Data, frozen=True):
    """A message the core tracks, by every id it has."""

    conversation: Conversation
    """The conversation it belongs to."""
    direction: Literal["in", "out"]
    """``in``: from the client to amoCRM; ``out``: from amoCRM to the client."""
    msgid: str
    """Our id of the message (amojo's ``msgid``)."""
    amocrm_id: str | None = None
    """amoCRM's id of the message, once known."""
    messenger_id: str | None = None
    """The messenger's id of the message, once known."""


class HistoryEntry(_Data, frozen=True):
    """One message of a chat as amoCRM keeps it (``AdapterContext.history``, newest first)."""

    amocrm_id: str | None = None
    """amoCRM's id of the message."""
    msgid: str | None = None
    """Our id of the message (amojo's ``msgid``), when it crossed through an integration."""
    kind: str = "text"
    """amojo's message type: ``text``, ``picture``, ``video``, ``file``, ``voice``, ``audio``, ``sticker``, ..."""
    text: str = ""
    """The text or the media's caption."""
    media_url: str | None = None
    """Where amoCRM keeps the media, for media messages."""
    file_name: str | None = None
    """The file's name, for files."""
    at_ms: int | None = None
    """When it was written, in milliseconds since the epoch."""
    from_client: bool = False
    """Written by the client (else by a manager, a bot or the business)."""
    sender_name: str | None = None
    """The writer's name as amoCRM shows it, when it says."""
