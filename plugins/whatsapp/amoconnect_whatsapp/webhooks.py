"""Meta's webhooks → neutral events. Pure logic: no IO, no clock.

The envelope is ``{"object": "whatsapp_business_account", "entry": [{"id": <WABA id>, "changes":
[{"field": "messages", "value": {"metadata": {"phone_number_id"}, "contacts", "messages" |
"statuses"}}]}]}``; several entries, changes and messages may come in one request. Both user
shapes are understood: the 2026 one with a business-scoped ``user_id`` (and possibly a username
and no phone number) and the older phone-only one. The chat of a user is their phone number
(``wa_id``) when WhatsApp shares it, else their ``user_id``, so a chat keeps its id across both.

Dedup keys: ``msg:{wamid}`` for messages and reactions, ``status:{wamid}:{status}`` for statuses,
``echo:{wamid}`` for echoes. ``message_template_status_update`` changes become
:class:`TemplateUpdate` records for the template review (:mod:`amoconnect_whatsapp.review`).

``smb_message_echoes`` changes (capability ``echoes``) report "messages sent via the WhatsApp
Business app or a companion (linked) device by a business customer who has been onboarded to
Cloud API" (coexistence): ``{"metadata", "message_echoes": [{"from": <business number>, "to":
<user's phone number>, "id", "timestamp", "type", <type>: {...}}]}`` (Meta's smb_message_echoes
webhook reference; a copy: support.chatarchitect.com/books/meta-whatsapp/page/
smb-message-echoes-webhook-reference-developer-documentation). Cloud API sends make none. Each
becomes an :class:`~amoconnect.model.InboundEcho` of the recipient's chat, named as in
``messages`` by the change's ``contacts`` (as pywa reads an echo), else by the digits of ``to``
("the same value returned by the API as the input value when sending", which may differ from
the user's ``wa_id``); an ``edit`` an :class:`~amoconnect.model.InboundEdit` of the original
message; a ``revoke`` nothing (amoCRM cannot delete a message), as for the client's own.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec
from amoconnect.errors import NOT_JSON, WebhookError
from amoconnect.model import (
    Attachment,
    Contact,
    InboundEcho,
    InboundEdit,
    InboundEvent,
    InboundMessage,
    InboundReaction,
    InboundStatus,
    Location,
    MediaKind,
    Person,
)
from amoconnect.signing import same_secret

from .cloudapi import GraphError, status_failure

__all__ = [
    "SIGNATURE_HEADER",
    "Envelope",
    "Parsed",
    "TemplateUpdate",
    "chat_of",
    "check_signature",
    "decode",
    "handshake",
    "parse",
    "well_formed_signature",
]

SIGNATURE_HEADER: Final = "X-Hub-Signature-256"

_MEDIA_KINDS: Final[dict[str, MediaKind]] = {
    "image": "picture",
    "video": "video",
    "document": "file",
    "audio": "audio",
    "sticker": "sticker",
}
_STATUSES: Final = {"sent": "sent", "delivered": "delivered", "read": "read", "played": "read", "failed": "failed"}


# -- wire shapes (unknown fields are ignored) ---------------------------------------------------


class _Profile(msgspec.Struct, kw_only=True):
    name: str = ""
    username: str | None = None


class _Contact(msgspec.Struct, kw_only=True):
    wa_id: str | None = None
    user_id: str | None = None
    profile: _Profile = msgspec.field(default_factory=_Profile)


class _Metadata(msgspec.Struct, kw_only=True):
    phone_number_id: str = ""
    display_phone_number: str = ""


class _Context(msgspec.Struct, kw_only=True):
    id: str | None = None
    forwarded: bool = False
    frequently_forwarded: bool = False


class _Media(msgspec.Struct, kw_only=True):
    id: str = ""
    mime_type: str | None = None
    caption: str = ""
    filename: str = ""
    voice: bool = False
    file_size: int | str | None = None


class _Message(msgspec.Struct, kw_only=True):
    id: str
    type: str = "unknown"
    timestamp: str | int = 0
    from_: str | None = msgspec.field(default=None, name="from")
    from_user_id: str | None = None
    context: _Context | None = None
    text: dict[str, Any] | None = None
    image: _Media | None = None
    video: _Media | None = None
    document: _Media | None = None
    audio: _Media | None = None
    sticker: _Media | None = None
    location: dict[str, Any] | None = None
    contacts: list[dict[str, Any]] | None = None
    reaction: dict[str, Any] | None = None
    interactive: dict[str, Any] | None = None
    button: dict[str, Any] | None = None
    order: dict[str, Any] | None = None
    system: dict[str, Any] | None = None
    referral: dict[str, Any] | None = None
    edit: dict[str, Any] | None = None
    errors: list[GraphError] | None = None


class _Echo(_Message, kw_only=True):
    to: str = ""


class _Echoes(msgspec.Struct, kw_only=True):
    metadata: _Metadata = msgspec.field(default_factory=_Metadata)
    contacts: list[_Contact] = []
    message_echoes: list[_Echo] = []


class _Status(msgspec.Struct, kw_only=True):
    id: str
    status: str
    timestamp: str | int = 0
    recipient_id: str | None = None
    recipient_user_id: str | None = None
    errors: list[GraphError] | None = None


class _Value(msgspec.Struct, kw_only=True):
    metadata: _Metadata = msgspec.field(default_factory=_Metadata)
    contacts: list[_Contact] = []
    messages: list[_Message] = []
    statuses: list[_Status] = []


class _Change(msgspec.Struct, kw_only=True):
    field: str = ""
    value: Any = None


class _Entry(msgspec.Struct, kw_only=True):
    id: str = ""
    time: int | None = None
    changes: list[_Change] = []


class Envelope(msgspec.Struct, kw_only=True):
    """A webhook request's body."""

    object: str = ""
    entry: list[_Entry] = []


# -- results ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TemplateUpdate:
    """A ``message_template_status_update``: Meta's verdict on a template."""

    waba_id: str
    template_id: str
    name: str
    language: str
    event: str
    """``APPROVED``, ``REJECTED``, ``PAUSED``, ``DISABLED``, ``PENDING``..."""
    reason: str = ""


@dataclass
class Parsed:
    """What one webhook request holds for one phone number."""

    events: list[InboundEvent] = field(default_factory=list)
    templates: list[TemplateUpdate] = field(default_factory=list)
    last_inbound: dict[str, str] = field(default_factory=dict)
    """Chat → the newest client message id (the typing indicator needs one)."""
    foreign: set[str] = field(default_factory=set)
    """Other phone_number_ids whose events came here and were left out."""


# -- signature and handshake --------------------------------------------------------------------


def well_formed_signature(header: str | None) -> bool:
    """True when ``header`` looks like ``X-Hub-Signature-256``: ``sha256=`` and 64 hex digits."""
    return header is not None and re.fullmatch(r"sha256=[0-9a-fA-F]{64}", header.strip()) is not None


def check_signature(app_secret: str, body: bytes, header: str | None) -> bool:
    """True when ``header`` is ``sha256=`` + the HMAC-SHA256 of ``body`` keyed with ``app_secret``."""
    if not header or not header.startswith("sha256="):
        return False
    expected = hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()
    return same_secret(header[7:].strip().lower(), expected)


def handshake(query: Any, verify_token: str) -> tuple[int, str]:
    """Status and body of the answer to Meta's ``hub.challenge`` GET."""
    mode = query.get("hub.mode")
    token = query.get("hub.verify_token") or ""
    challenge = query.get("hub.challenge")
    if mode != "subscribe" or challenge is None:
        return 400, "expected hub.mode=subscribe with a hub.challenge"
    if not same_secret(token, verify_token):
        return 403, "hub.verify_token does not match this instance's verify_token"
    return 200, challenge


# -- parsing ------------------------------------------------------------------------------------


def decode(body: bytes) -> Envelope:
    """The envelope of a webhook body; :class:`WebhookError` when it is not one."""
    try:
        envelope = msgspec.json.decode(body, type=Envelope)
    except (msgspec.DecodeError, msgspec.ValidationError, *NOT_JSON) as exc:
        raise WebhookError(f"not a WhatsApp webhook: {exc}") from None
    if envelope.object != "whatsapp_business_account":
        raise WebhookError(f"not a WhatsApp webhook: object is {envelope.object!r}")
    return envelope


def chat_of(wa_id: str | None, user_id: str | None) -> str | None:
    """The chat id of a user: the phone number when shared, else the business-scoped user id."""
    return wa_id or user_id or None


def parse(envelope: Envelope, phone_number_id: str, waba_id: str) -> Parsed:
    """The events of the changes for ``phone_number_id``, and the template updates of ``waba_id``."""
    parsed = Parsed()
    for entry in envelope.entry:
        for change in entry.changes:
            if change.field == "message_template_status_update":
                update = _template_update(entry, change.value)
                if update is not None and entry.id == waba_id:
                    parsed.templates.append(update)
                continue
            if change.field == "smb_message_echoes":
                try:
                    echoes = msgspec.convert(change.value, _Echoes)
                except msgspec.ValidationError as exc:
                    raise WebhookError(f"an 'smb_message_echoes' change of an unexpected shape: {exc}") from None
                if echoes.metadata.phone_number_id != phone_number_id:
                    parsed.foreign.add(echoes.metadata.phone_number_id)
                    continue
                for echo in echoes.message_echoes:
                    event = _echo(echo, echoes)
                    if event is not None:
                        parsed.events.append(event)
                continue
            if change.field != "messages":
                continue
            try:
                value = msgspec.convert(change.value, _Value)
            except msgspec.ValidationError as exc:
                raise WebhookError(f"a 'messages' change of an unexpected shape: {exc}") from None
            if value.metadata.phone_number_id != phone_number_id:
                parsed.foreign.add(value.metadata.phone_number_id)
                continue
            _value(value, parsed)
    return parsed


def _template_update(entry: _Entry, value: Any) -> TemplateUpdate | None:
    if not isinstance(value, dict) or "message_template_id" not in value:
        return None
    reason = value.get("reason") or ""
    info = value.get("rejection_info")
    if isinstance(info, dict) and info.get("reason"):
        reason = f"{reason}: {info['reason']}" if reason and reason != "NONE" else str(info["reason"])
    other = value.get("other_info")
    if not reason and isinstance(other, dict):
        reason = str(other.get("description") or other.get("title") or "")
    return TemplateUpdate(
        waba_id=entry.id,
        template_id=str(value["message_template_id"]),
        name=str(value.get("message_template_name") or ""),
        language=str(value.get("message_template_language") or ""),
        event=str(value.get("event") or ""),
        reason="" if reason == "NONE" else str(reason),
    )


def _timestamp(value: str | int) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def _value(value: _Value, parsed: Parsed) -> None:
    contacts = {c.wa_id: c for c in value.contacts if c.wa_id}
    by_user = {c.user_id: c for c in value.contacts if c.user_id}
    for message in value.messages:
        contact = contacts.get(message.from_ or "") or by_user.get(message.from_user_id or "")
        if contact is None and len(value.contacts) == 1:
            contact = value.contacts[0]
        wa_id = message.from_ or (contact.wa_id if contact else None)
        user_id = message.from_user_id or (contact.user_id if contact else None)
        chat = chat_of(wa_id, user_id)
        if chat is None:
            raise WebhookError(f"message {message.id!r} names no sender (neither 'from' nor a contact)")
        profile = contact.profile if contact else _Profile()
        sender = Person(
            id=chat,
            name=profile.name,
            username=profile.username,
            phone=f"+{wa_id}" if wa_id and wa_id.isdigit() else None,
        )
        if message.type == "revoke":
            continue  # the client deleted a message: amoCRM has nothing to delete it with
        event = _message(message, chat, sender)
        parsed.events.append(event)
        if isinstance(event, InboundMessage):
            parsed.last_inbound[chat] = message.id
    for status in value.statuses:
        chat = chat_of(status.recipient_id, status.recipient_user_id)
        neutral = _STATUSES.get(status.status)
        if chat is None or neutral is None:
            continue  # "deleted", "warning" and other statuses amoCRM has no word for
        reason = error_code = None
        text = ""
        if neutral == "failed":
            reason, text, error_code = status_failure(status.errors[0] if status.errors else None)
        parsed.events.append(
            InboundStatus(
                chat=chat,
                timestamp=_timestamp(status.timestamp),
                dedup_key=f"status:{status.id}:{status.status}",
                message_id=status.id,
                status=neutral,  # type: ignore[arg-type]
                reason=reason,
                error_code=error_code,
                error=text,
            )
        )


def _message(message: _Message, chat: str, sender: Person) -> InboundEvent:
    common: dict[str, Any] = {
        "chat": chat,
        "timestamp": _timestamp(message.timestamp),
        "dedup_key": f"msg:{message.id}",
        "sender": sender,
        "message_id": message.id,
    }
    if message.type == "reaction" and message.reaction is not None:
        emoji = str(message.reaction.get("emoji") or "")
        target = str(message.reaction.get("message_id") or "")
        return InboundReaction(
            chat=chat,
            timestamp=common["timestamp"],
            dedup_key=common["dedup_key"],
            sender=sender,
            message_id=target,
            emoji=emoji,
            removed=not emoji,
        )
    if message.type == "edit" and message.edit is not None:
        return _edit(message, common)
    context = message.context
    if context is not None:
        common["reply_to"] = context.id if context.id and message.type not in ("interactive", "button") else None
        common["forwarded"] = context.forwarded or context.frequently_forwarded
    return InboundMessage(**common, **_content(message))


def _echo(echo: _Echo, value: _Echoes) -> InboundEvent | None:
    """One message the business sent from the WhatsApp Business app; ``None`` for a revocation."""
    to = re.sub(r"\D", "", echo.to)
    contact = next((c for c in value.contacts if c.wa_id and c.wa_id == to), None)
    if contact is None and len(value.contacts) == 1:
        contact = value.contacts[0]
    chat = chat_of(contact.wa_id, contact.user_id) if contact is not None else to or None
    if chat is None:
        raise WebhookError(f"message echo {echo.id!r} names no recipient (neither 'to' nor a contact)")
    if echo.type == "revoke":
        return None  # amoCRM has nothing to delete a message with
    business = Person(id=re.sub(r"\D", "", echo.from_ or value.metadata.display_phone_number) or "business")
    common: dict[str, Any] = {"chat": chat, "timestamp": _timestamp(echo.timestamp), "dedup_key": f"echo:{echo.id}"}
    if echo.type == "edit" and echo.edit is not None:
        return _edit(echo, {**common, "sender": business, "message_id": echo.id})
    profile = contact.profile if contact is not None else _Profile()
    wa_id = contact.wa_id if contact is not None else to
    client = Person(
        id=chat,
        name=profile.name,
        username=profile.username,
        phone=f"+{wa_id}" if wa_id and wa_id.isdigit() else None,
    )
    context = echo.context
    reply_to = context.id if context is not None and context.id else None
    content = {k: v for k, v in _content(echo).items() if k != "callback_data"}
    return InboundEcho(**common, client=client, message_id=echo.id, reply_to=reply_to, **content)


def _edit(message: _Message, common: dict[str, Any]) -> InboundEvent:
    """An edit of an earlier message: its new content, under the original message's id."""
    assert message.edit is not None
    original = str(message.edit.get("original_message_id") or "")
    try:
        inner = msgspec.convert({**(message.edit.get("message") or {}), "id": original}, _Message)
    except msgspec.ValidationError as exc:
        raise WebhookError(f"an edit of an unexpected shape: {exc}") from None
    content = {k: v for k, v in _content(inner).items() if k != "callback_data"}
    return InboundEdit(**{**common, "message_id": original}, **content)


def _content(message: _Message) -> dict[str, Any]:
    kind = message.type
    if kind == "text" and message.text is not None:
        return {"text": str(message.text.get("body") or "")}
    media = getattr(message, kind, None) if kind in _MEDIA_KINDS else None
    if isinstance(media, _Media) and media.id:
        neutral: MediaKind = "voice" if kind == "audio" and media.voice else _MEDIA_KINDS[kind]
        size = (
            int(media.file_size) if isinstance(media.file_size, int | str) and str(media.file_size).isdigit() else None
        )
        attachment = Attachment(
            kind=neutral, fetch=media.id, file_name=media.filename, mime_type=media.mime_type, size=size
        )
        return {"text": media.caption, "attachments": (attachment,)}
    if kind == "location" and message.location is not None:
        return _location(message.location)
    if kind == "contacts" and message.contacts:
        return _contacts(message.contacts)
    if kind == "interactive" and message.interactive is not None:
        reply = message.interactive.get("list_reply") or message.interactive.get("button_reply")
        if isinstance(reply, dict):
            return {"text": str(reply.get("title") or reply.get("id") or ""), "callback_data": str(reply.get("id"))}
        return {"text": f"[interactive reply: {message.interactive.get('type', 'unknown')}]"}
    if kind == "button" and message.button is not None:
        payload = message.button.get("payload")
        text = str(message.button.get("text") or payload or "")
        return {"text": text, "callback_data": str(payload) if payload else text}
    return {"text": _placeholder(message)}


def _location(location: dict[str, Any]) -> dict[str, Any]:
    try:
        point = Location(lat=float(location["latitude"]), lon=float(location["longitude"]))
    except (KeyError, TypeError, ValueError):
        return {"text": "[location without coordinates]"}
    label = ", ".join(str(location[k]) for k in ("name", "address") if location.get(k))
    return {"location": point, "text": label}


def _contacts(cards: list[dict[str, Any]]) -> dict[str, Any]:
    lines = []
    first: Contact | None = None
    for card in cards:
        raw_name = card.get("name")
        name: dict[str, Any] = raw_name if isinstance(raw_name, dict) else {}
        label = str(name.get("formatted_name") or name.get("first_name") or "contact")
        found = [p.get("phone") or p.get("wa_id") for p in card.get("phones") or [] if isinstance(p, dict)]
        phones = [str(p) for p in found if p]
        if first is None and phones:
            first = Contact(name=label, phone=phones[0])
        lines.append(f"{label}: {', '.join(phones) or 'no phone'}")
    if first is not None and len(cards) == 1:
        return {"contact": first}
    return {"text": "\n".join(["[contacts]", *lines])}


def _placeholder(message: _Message) -> str:
    """A readable stand-in for a message amoCRM cannot show (order, system, unsupported, ...)."""
    if message.type == "order" and message.order is not None:
        items = message.order.get("product_items") or []
        return f"[order of {len(items)} item(s) from catalog {message.order.get('catalog_id', '?')}]"
    if message.type == "system" and message.system is not None:
        return f"[system: {message.system.get('body') or message.system.get('type') or 'notice'}]"
    if message.errors:
        return f"[a {message.type} message WhatsApp cannot show here: {message.errors[0].summary}]"
    return f"[a {message.type} message WhatsApp cannot show here; open WhatsApp to see it]"
