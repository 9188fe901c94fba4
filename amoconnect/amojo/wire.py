"""Typed models of every amojo request, response and webhook (spec §4–§8).

All models are :class:`msgspec.Struct` subclasses built with ``omit_defaults=True``: optional
fields default to ``None`` (lists to empty) and are left out of the encoded JSON, so a request
never carries ``null``. Decoding ignores unknown fields and refuses wrong types.

:func:`encode` serialises a model once; sign those bytes and send those bytes (spec §2).
:func:`decode` reads a response body into a model. :func:`parse_webhook` reads a v2 webhook
body into a :class:`MessageHook`, :class:`TypingHook` or :class:`ReactionHook`, leniently
(:mod:`amoconnect.amojo.hooks`).

Webhook version rule: amoCRM's v2 hooks carry ``account_id`` and ``time`` at the top level
next to ``message`` or ``action``. A body without both of them is taken for a deprecated v1
hook (or no amojo hook at all) and refused, as is a body whose explicit ``hook_api_version``
or ``version`` field names anything other than ``v2``.
"""

from __future__ import annotations

import enum
from typing import Annotated, Any, Literal, TypeVar

import msgspec

from ..errors import NOT_JSON, WebhookError
from .hooks import convert_leniently

__all__ = [
    "Button",
    "ChatUser",
    "ChatUserInfo",
    "ConnectRequest",
    "ConnectResponse",
    "Contact",
    "Conversation",
    "CreateChatRequest",
    "CreateChatResponse",
    "DeliveryStatusCode",
    "DeliveryStatusRequest",
    "DisconnectRequest",
    "EditDeliveryStatus",
    "EmbeddedMessage",
    "EmbeddedSender",
    "ErrorCode",
    "EventType",
    "Forwards",
    "HistoryMessage",
    "HistoryMessageBody",
    "HistoryParticipant",
    "HistoryResponse",
    "HookMessage",
    "HookMessageBody",
    "HookPost",
    "HookReceiver",
    "HookSender",
    "ListMessage",
    "ListRow",
    "ListSection",
    "Location",
    "Markup",
    "MessageContent",
    "MessageEvent",
    "MessageHook",
    "MessagePayload",
    "MessageType",
    "Participant",
    "Post",
    "Profile",
    "ReactRequest",
    "ReactUser",
    "ReactionAction",
    "ReactionHook",
    "ReactionHookAction",
    "ReactionMessageRef",
    "ReactionType",
    "ReplyTo",
    "SendMessageResponse",
    "SentMessage",
    "SharedPost",
    "Source",
    "Template",
    "TemplateParam",
    "TypingAction",
    "TypingHook",
    "TypingHookAction",
    "TypingRequest",
    "UserRef",
    "Webhook",
    "decode",
    "encode",
    "parse_webhook",
]

_T = TypeVar("_T")

MessageType = Literal["text", "contact", "file", "video", "picture", "voice", "audio", "sticker", "location"]
"""Message kinds amojo accepts in a ``new_message`` payload."""
EventType = Literal["new_message", "edit_message"]
"""The two events of the send-message method."""
ReactionType = Literal["react", "unreact"]
"""Setting or removing a reaction."""


class DeliveryStatusCode(enum.IntEnum):
    """Values of ``delivery_status`` (spec §6)."""

    DELIVERED = 1
    READ = 2
    ERROR = -1


class ErrorCode(enum.IntEnum):
    """Values of ``error_code`` with a failed delivery (spec §6); 905 requires an ``error`` text."""

    BLOCKED = 901
    INTEGRATION_DISABLED = 902
    INTERNAL = 903
    CANNOT_CREATE_CONVERSATION = 904
    OTHER = 905


class _Model(msgspec.Struct, omit_defaults=True):
    """Base of every wire model: defaults are omitted when encoding."""


# -- connect / disconnect (§4 methods 1–2) ------------------------------------------------------


class ConnectRequest(_Model, kw_only=True):
    """Body of ``POST /v2/origin/custom/{channel_id}/connect``."""

    account_id: str
    # A factory, not a plain default: omit_defaults must still send "v2" (v1 hooks are refused).
    hook_api_version: str = msgspec.field(default_factory=lambda: "v2")
    title: str | None = None
    is_time_window_disabled: bool | None = None


class ConnectResponse(_Model, kw_only=True):
    """Answer of *connect*: the request's fields plus ``scope_id`` (``{channel_id}_{account_id}``)."""

    account_id: str
    scope_id: str
    hook_api_version: str | None = None
    title: str | None = None
    is_time_window_disabled: bool | None = None


class DisconnectRequest(_Model, kw_only=True):
    """Body of ``DELETE /v2/origin/custom/{channel_id}/disconnect``."""

    account_id: str


# -- create chat (§4 method 3) -------------------------------------------------------------------


class Profile(_Model, kw_only=True):
    """Contact details of a client."""

    phone: str | None = None
    email: str | None = None


class Source(_Model, kw_only=True):
    """A messenger source (e.g. one WhatsApp number), identified by our ``external_id``."""

    external_id: str


class ChatUser(_Model, kw_only=True):
    """The client a chat is created for."""

    id: str
    name: str | None = None
    avatar: str | None = None
    profile: Profile | None = None
    profile_link: str | None = None


class CreateChatRequest(_Model, kw_only=True):
    """Body of ``POST /v2/origin/custom/{scope_id}/chats``."""

    conversation_id: str
    user: ChatUser
    source: Source | None = None


class ChatUserInfo(_Model, kw_only=True):
    """The client as amoCRM stored it: ``id`` is amoCRM's, ``client_id`` ours."""

    id: str
    client_id: str | None = None
    name: str | None = None
    avatar: str | None = None
    phone: str | None = None
    email: str | None = None


class CreateChatResponse(_Model, kw_only=True):
    """Answer of *create chat*: ``id`` is amoCRM's chat id."""

    id: str
    user: ChatUserInfo


# -- send message (§4 methods 4 and 9, §5, §7) ------------------------------------------------------


class Participant(_Model, kw_only=True):
    """Sender or receiver of a message: ``id`` is ours, ``ref_id`` an amoCRM user or bot amojo id."""

    id: str | None = None
    ref_id: str | None = None
    name: str | None = None
    avatar: str | None = None
    profile: Profile | None = None
    profile_link: str | None = None


class Location(_Model, kw_only=True):
    """A point on the map."""

    lon: float
    lat: float


class Contact(_Model, kw_only=True):
    """A shared contact card."""

    name: str
    phone: str


class SharedPost(_Model, kw_only=True):
    """A post the client shared into the chat."""

    url: str
    type: str = "post"
    preview_link: str | None = None
    preview_permalink: str | None = None
    site_name: str | None = None


class Post(_Model, kw_only=True):
    """The post a comment belongs to (§7); ``id`` is our post id."""

    id: str
    url: str | None = None
    preview_url: str | None = None
    preview_permalink: str | None = None
    username: str | None = None
    caption: str | None = None


class EditDeliveryStatus(_Model, kw_only=True):
    """A delivery status carried by an ``edit_message`` event."""

    delivery_status: int
    error_code: int | None = None
    error: str | None = None


class MessageContent(_Model, kw_only=True):
    """``payload.message``: what was said."""

    type: MessageType
    text: str | None = None
    media: str | None = None
    file_name: str | None = None
    file_size: int | None = None
    media_duration: int | None = None
    sticker_id: str | None = None
    location: Location | None = None
    contact: Contact | None = None
    callback_data: str | None = None
    shared_post: SharedPost | None = None
    delivery_status: EditDeliveryStatus | None = None
    post: Post | None = None


class EmbeddedSender(_Model, kw_only=True):
    """The author of a quoted or forwarded message."""

    id: str | None = None
    ref_id: str | None = None
    client_id: str | None = None
    name: str | None = None


class EmbeddedMessage(_Model, kw_only=True):
    """A quoted or forwarded message: a reference (``id`` / ``msgid``) or a full copy."""

    id: str | None = None
    msgid: str | None = None
    client_id: str | None = None
    type: str | None = None
    text: str | None = None
    media: str | None = None
    thumbnail: str | None = None
    file_name: str | None = None
    file_size: int | None = None
    media_duration: int | None = None
    timestamp: int | None = None
    msec_timestamp: int | None = None
    sender: EmbeddedSender | None = None


class ReplyTo(_Model, kw_only=True):
    """The message being answered (same chat)."""

    message: EmbeddedMessage


class Conversation(_Model, kw_only=True):
    """A chat as webhooks name it: ``id`` is amoCRM's, ``client_id`` our conversation_id (absent on write-first)."""

    id: str
    client_id: str | None = None


class Forwards(_Model, kw_only=True):
    """Forwarded messages (at most one) and the chat they come from."""

    messages: Annotated[list[EmbeddedMessage], msgspec.Meta(max_length=1)]
    conversation_ref_id: str | None = None
    conversation_id: str | None = None
    conversation: Conversation | None = None


class MessagePayload(_Model, kw_only=True):
    """``payload`` of a ``new_message`` / ``edit_message`` event (§5)."""

    timestamp: int
    msec_timestamp: int
    msgid: str
    conversation_id: str
    sender: Participant
    message: MessageContent
    conversation_ref_id: str | None = None
    silent: bool | None = None
    source: Source | None = None
    receiver: Participant | None = None
    id: str | None = None
    reply_to: ReplyTo | None = None
    forwards: Forwards | None = None


class MessageEvent(_Model, kw_only=True):
    """Body of ``POST /v2/origin/custom/{scope_id}``."""

    event_type: EventType
    payload: MessagePayload


class SentMessage(_Model, kw_only=True):
    """``new_message`` of the send answer: ``msgid`` is amoCRM's id, ``ref_id`` ours."""

    msgid: str
    conversation_id: str | None = None
    sender_id: str | None = None
    receiver_id: str | None = None
    ref_id: str | None = None


class SendMessageResponse(_Model, kw_only=True):
    """Answer of *send message*."""

    new_message: SentMessage


# -- delivery status, history, typing, react (§4 methods 5–8) ------------------------------------


class DeliveryStatusRequest(_Model, kw_only=True):
    """Body of ``POST /v2/origin/custom/{scope_id}/{msgid}/delivery_status``; ``msgid`` is amoCRM's."""

    msgid: str
    delivery_status: int
    error_code: int | None = None
    error: str | None = None

    def __post_init__(self) -> None:
        if self.delivery_status not in (1, 2, -1):  # delivered, read, error
            raise ValueError(
                f"delivery_status must be 1 (delivered), 2 (read) or -1 (error), got {self.delivery_status}"
            )
        if self.error_code == ErrorCode.OTHER and not self.error:
            raise ValueError("error_code 905 needs an error text to show the manager")


class HistoryParticipant(_Model, kw_only=True):
    """Sender or receiver in a history entry."""

    id: str | None = None
    client_id: str | None = None
    ref_id: str | None = None
    name: str | None = None
    avatar: str | None = None
    phone: str | None = None
    email: str | None = None


class HistoryMessageBody(_Model, kw_only=True):
    """The message part of a history entry; ``id`` is amoCRM's, ``client_id`` our msgid when known."""

    id: str | None = None
    client_id: str | None = None
    type: str | None = None
    text: str | None = None
    media: str | None = None
    thumbnail: str | None = None
    file_name: str | None = None
    file_size: int | None = None
    media_duration: int | None = None
    markup: Any = None
    template: Any = None


class HistoryMessage(_Model, kw_only=True):
    """One entry of a chat's history."""

    message: HistoryMessageBody
    timestamp: int | None = None
    msec_timestamp: int | None = None
    sender: HistoryParticipant | None = None
    receiver: HistoryParticipant | None = None


class HistoryResponse(_Model, kw_only=True):
    """Answer of *history*: newest first."""

    messages: list[HistoryMessage] = []


class UserRef(_Model, kw_only=True):
    """A user named by id only."""

    id: str


class TypingRequest(_Model, kw_only=True):
    """Body of ``POST /v2/origin/custom/{scope_id}/typing``."""

    conversation_id: str
    sender: UserRef
    duration_ms: int | None = None


class ReactUser(_Model, kw_only=True):
    """Who reacts: our user ``id``, or an amoCRM user's amojo id in ``ref_id``."""

    id: str
    ref_id: str | None = None


class ReactRequest(_Model, kw_only=True):
    """Body of ``POST /v2/origin/custom/{scope_id}/react``.

    The chat is named by ``conversation_id`` (ours) or ``conversation_ref_id`` (amoCRM's), the
    message by ``msgid`` (ours) or ``id`` (amoCRM's). ``emoji`` is required to react.
    """

    user: ReactUser
    type: ReactionType
    conversation_id: str | None = None
    conversation_ref_id: str | None = None
    msgid: str | None = None
    id: str | None = None
    emoji: str | None = None

    def __post_init__(self) -> None:
        if self.conversation_id is None and self.conversation_ref_id is None:
            raise ValueError("a reaction needs conversation_id or conversation_ref_id")
        if self.msgid is None and self.id is None:
            raise ValueError("a reaction needs msgid or id")
        if self.type == "react" and not self.emoji:
            raise ValueError("a 'react' reaction needs an emoji")


# -- webhooks (§8) ----------------------------------------------------------------------------------


class HookSender(_Model, kw_only=True):
    """The amoCRM user (or bot) who wrote: ``id`` is an amojo id."""

    id: str
    name: str | None = None
    client_id: str | None = None
    avatar: str | None = None


class HookReceiver(_Model, kw_only=True):
    """The client a manager writes to: ``client_id`` is our user id (absent on write-first)."""

    id: str
    client_id: str | None = None
    phone: str | None = None
    email: str | None = None
    name: str | None = None
    avatar: str | None = None


class Button(_Model, kw_only=True):
    """An inline button: a link when ``url`` is set."""

    text: str
    url: str | None = None


class ListRow(_Model, kw_only=True):
    """A row of a WhatsApp List Message; ``callback_data`` comes back when the client picks it."""

    callback_data: str
    title: str
    description: str | None = None


class ListSection(_Model, kw_only=True):
    """A titled group of rows."""

    rows: list[ListRow]
    title: str | None = None


class ListMessage(_Model, kw_only=True):
    """A WhatsApp List Message sent by Salesbot."""

    body: str
    button: str
    sections: list[ListSection]
    header: str | None = None
    footer: str | None = None


class Markup(_Model, kw_only=True):
    """Keyboard of a manager's message: inline ``buttons`` (rows) or a ``list_message``."""

    mode: str | None = None
    buttons: list[list[Button]] | None = None
    list_message: ListMessage | None = None


class TemplateParam(_Model, kw_only=True):
    """A filled-in template marker."""

    key: str
    value: str


class Template(_Model, kw_only=True):
    """A chat template the manager or a bot sent; ``content`` carries ``{{markers}}``."""

    id: int | str
    content: str
    external_id: str | None = None
    params: list[TemplateParam] = []


class HookPost(_Model, kw_only=True):
    """The post a manager's comment reply belongs to; ``id`` is our post id."""

    id: str
    url: str | None = None


class HookMessageBody(_Model, kw_only=True):
    """``message.message`` of a message hook; ``id`` is amoCRM's message id."""

    id: str
    type: str
    text: str | None = None
    media: str | None = None
    thumbnail: str | None = None
    file_name: str | None = None
    file_size: int | None = None
    media_duration: int | None = None
    tag: str | None = None
    media_group_id: str | None = None
    markup: Markup | None = None
    template: Template | None = None
    reply_to: ReplyTo | None = None
    forwards: Forwards | None = None
    post: HookPost | None = None


class HookMessage(_Model, kw_only=True):
    """``message`` of a message hook."""

    conversation: Conversation
    sender: HookSender
    receiver: HookReceiver
    timestamp: int
    message: HookMessageBody
    msec_timestamp: int | None = None
    source: Source | None = None


class MessageHook(_Model, kw_only=True):
    """A message a manager (or Salesbot) wrote in amoCRM, to deliver to the client."""

    account_id: str
    time: int
    message: HookMessage

    @property
    def amocrm_message_id(self) -> str:
        """amoCRM's id of the message: the ``{msgid}`` of a later delivery status."""
        return self.message.message.id

    @property
    def conversation_id(self) -> str | None:
        """Our conversation_id, ``None`` for a write-first chat."""
        return self.message.conversation.client_id

    @property
    def is_write_first(self) -> bool:
        """True when the manager started the chat: amoCRM knows no conversation_id of ours yet."""
        return self.message.conversation.client_id is None

    @property
    def is_comment_reply(self) -> bool:
        """True when the manager answered a comment (``message.post`` is set)."""
        return self.message.message.post is not None


class TypingAction(_Model, kw_only=True):
    """``action.typing``: a manager is typing until ``expired_at`` (unix seconds)."""

    user: UserRef
    conversation: Conversation
    expired_at: int
    post_id: str | None = None


class ReactionMessageRef(_Model, kw_only=True):
    """The message reacted to, in the nested shape."""

    id: str
    client_id: str | None = None


class ReactionAction(_Model, kw_only=True):
    """``action.reaction``; the message is a flat ``msgid`` or a nested ``message{id}``."""

    user: UserRef
    conversation: Conversation
    type: ReactionType
    msgid: str | None = None
    message: ReactionMessageRef | None = None
    emoji: str | None = None

    def __post_init__(self) -> None:
        if self.msgid is None and self.message is None:
            raise ValueError("a reaction needs msgid or message.id")

    @property
    def message_id(self) -> str:
        """amoCRM's id of the message reacted to, whichever shape carried it."""
        if self.message is not None:
            return self.message.id
        assert self.msgid is not None  # guaranteed by __post_init__
        return self.msgid


class TypingHookAction(_Model, kw_only=True):
    """``action`` of a typing hook."""

    typing: TypingAction


class ReactionHookAction(_Model, kw_only=True):
    """``action`` of a reaction hook."""

    reaction: ReactionAction


class TypingHook(_Model, kw_only=True):
    """A manager is typing."""

    account_id: str
    time: int
    action: TypingHookAction

    @property
    def typing(self) -> TypingAction:
        """The typing action."""
        return self.action.typing


class ReactionHook(_Model, kw_only=True):
    """A manager set or removed a reaction."""

    account_id: str
    time: int
    action: ReactionHookAction

    @property
    def reaction(self) -> ReactionAction:
        """The reaction action."""
        return self.action.reaction


Webhook = MessageHook | TypingHook | ReactionHook
"""Any v2 webhook :func:`parse_webhook` returns."""


class _Action(msgspec.Struct):
    typing: TypingAction | None = None
    reaction: ReactionAction | None = None


class _Envelope(msgspec.Struct):
    account_id: str
    time: int
    message: HookMessage | None = None
    action: _Action | None = None


class _Probe(msgspec.Struct):
    """What tells a v2 hook from a v1 one, read before the shape is checked."""

    account_id: Any = None
    time: Any = None
    hook_api_version: Any = None
    version: Any = None


# -- encoding -----------------------------------------------------------------------------------------

_encoder = msgspec.json.Encoder()
_decoders: dict[Any, msgspec.json.Decoder[Any]] = {}
_envelope_decoder = msgspec.json.Decoder(_Envelope)
_probe_decoder = msgspec.json.Decoder(_Probe)


def encode(obj: msgspec.Struct) -> bytes:
    """Serialise a model to compact JSON bytes: sign exactly these and send exactly these."""
    return _encoder.encode(obj)


def decode(data: bytes | str, type: type[_T]) -> _T:
    """Decode JSON ``data`` into ``type``; raises :class:`msgspec.DecodeError` (or its subclass
    :class:`msgspec.ValidationError`, whose message names the path) when it does not fit."""
    decoder = _decoders.get(type)
    if decoder is None:
        decoder = _decoders[type] = msgspec.json.Decoder(type)
    result: _T = decoder.decode(data)
    return result


def parse_webhook(body: bytes | str) -> Webhook:
    """Decode a raw v2 webhook body (verify its signature first).

    A type surprise is repaired where it decides nothing (:func:`~amoconnect.amojo.hooks.convert_leniently`).
    Raises :class:`~amoconnect.errors.WebhookError` on malformed JSON, wrong types that cannot be
    repaired (the message names the path, e.g. ``$.message.sender.id``), a body that is neither a
    message nor a typing or reaction action, and v1 hooks (see the module docstring for the rule).
    """
    try:
        probe = _probe_decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise WebhookError(f"webhook body has the wrong shape: {exc}") from exc
    except (msgspec.DecodeError, *NOT_JSON) as exc:
        raise WebhookError(f"webhook body is not valid JSON: {exc}") from exc
    for name in ("hook_api_version", "version"):
        declared = getattr(probe, name)
        if declared is not None and declared != "v2":
            raise WebhookError(f"webhook declares {name}={declared!r}; only v2 hooks are supported, connect with v2")
    missing = [name for name in ("account_id", "time") if getattr(probe, name) is None]
    if missing:
        raise WebhookError(
            f"webhook body lacks {' and '.join(missing)} at the top level: a v1 hook or not an amojo hook;"
            " connect the channel with hook_api_version 'v2'"
        )
    try:
        envelope = _envelope_decoder.decode(body)
    except msgspec.ValidationError:
        try:  # a type surprise: decoded again leniently (see amoconnect.amojo.hooks)
            envelope = convert_leniently(msgspec.json.decode(body), _Envelope)
        except msgspec.ValidationError as exc:
            raise WebhookError(f"webhook body has the wrong shape: {exc}") from exc
        except (msgspec.DecodeError, *NOT_JSON) as exc:
            raise WebhookError(f"webhook body is not valid JSON: {exc}") from exc
    except NOT_JSON as exc:  # the probe skips what it does not keep: strings are checked only here
        raise WebhookError(f"webhook body is not valid JSON: {exc}") from exc
    account_id, time = envelope.account_id, envelope.time
    if envelope.message is not None and envelope.action is not None:
        raise WebhookError("webhook body carries both 'message' and 'action'; expected exactly one")
    if envelope.message is not None:
        return MessageHook(account_id=account_id, time=time, message=envelope.message)
    if envelope.action is None:
        raise WebhookError("webhook body carries neither 'message' nor 'action'")
    typing, reaction = envelope.action.typing, envelope.action.reaction
    if typing is not None and reaction is None:
        return TypingHook(account_id=account_id, time=time, action=TypingHookAction(typing=typing))
    if reaction is not None and typing is None:
        return ReactionHook(account_id=account_id, time=time, action=ReactionHookAction(reaction=reaction))
    raise WebhookError("webhook 'action' must carry exactly one of 'typing' or 'reaction'")
