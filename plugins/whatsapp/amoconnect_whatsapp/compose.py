"""Neutral sends → Cloud API request bodies. Pure logic: no IO.

:func:`plan_message` turns an :class:`~amoconnect.model.OutgoingMessage` into the bodies of
``POST /{phone_number_id}/messages``, in order. What WhatsApp cannot take whole is refused with a
:class:`~amoconnect.errors.MessengerError` that says what does not fit (amoCRM shows it as 905),
never cut silently — except plain text, which goes out in several messages of at most 4,096
characters.

Templates: the WhatsApp template's name and language come from the amoCRM template's
``external_id``, written ``name:language`` (``order_ready:en_US``) or ``name`` (the instance's
``default_language`` then), or from the template review's record of the template. Body
parameters are the template's ``{{markers}}`` in the order they first appear in its content
(a positional template's ``{{1}}``, ``{{2}}``…); for a template Meta lists as named, each goes
with its ``parameter_name``, the amoCRM marker of the same name giving its value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final

from amoconnect.errors import MessengerError
from amoconnect.model import Attachment, Button, ListMessage, OutgoingMessage, Template

from .cloudapi import (
    BODY_LIMIT,
    BUTTON_ID_LIMIT,
    BUTTON_TITLE_LIMIT,
    CAPTION_LIMIT,
    HEADER_LIMIT,
    LIST_BUTTON_LIMIT,
    LIST_ROWS_LIMIT,
    LIST_SECTIONS_LIMIT,
    REPLY_BUTTONS_LIMIT,
    ROW_DESCRIPTION_LIMIT,
    ROW_ID_LIMIT,
    ROW_TITLE_LIMIT,
    TEXT_LIMIT,
)

__all__ = [
    "MARKER",
    "MEDIA_TYPES",
    "Part",
    "TemplateRef",
    "base",
    "markers",
    "plan_message",
    "split_text",
    "template_body",
    "template_ref",
]

MARKER: Final = re.compile(r"\{\{\s*([^{}]+?)\s*\}\}")
MEDIA_TYPES: Final = {
    "picture": "image",
    "video": "video",
    "file": "document",
    "voice": "audio",
    "audio": "audio",
    "sticker": "sticker",
}
"""Neutral media kind → WhatsApp message type."""
_CAPTIONED: Final = frozenset({"image", "video", "document"})
_LANGUAGE: Final = re.compile(r"[a-z]{2,3}(?:_[A-Za-z]{2,4})?\Z")
_URL: Final = re.compile(r"https?://", re.IGNORECASE)
_BUTTONS_BODY: Final = "👇"


@dataclass(frozen=True)
class Part:
    """One ``/messages`` request: its body, and the attachment it carries by link (for the upload fallback)."""

    body: dict[str, Any]
    attachment: Attachment | None = None


@dataclass(frozen=True)
class TemplateRef:
    """A WhatsApp template: its name and language, and the markers of its header and body, in order."""

    name: str
    language: str
    body: tuple[str, ...] = ()
    header: tuple[str, ...] = ()
    named: bool = False
    """Meta's template has named parameters: each goes with its ``parameter_name`` (``body``, ``header``
    are then Meta's names); else positional: ``{{1}}``, ``{{2}}``… take amoCRM's markers in order."""


def base(chat: str) -> dict[str, Any]:
    """The common fields of a message to ``chat``: ``to`` for a phone number, ``recipient`` for a user id."""
    digits = chat.lstrip("+")
    address = {"to": digits} if digits.isdigit() else {"recipient": chat}
    return {"messaging_product": "whatsapp", "recipient_type": "individual", **address}


def split_text(text: str, limit: int = TEXT_LIMIT) -> list[str]:
    """``text`` in pieces of at most ``limit`` characters, cut at paragraph, line or word ends."""
    pieces: list[str] = []
    rest = text
    while len(rest) > limit:
        window = rest[:limit]
        cut = max(window.rfind("\n\n"), window.rfind("\n"), window.rfind(" "))
        if cut < limit // 2:
            cut = limit
        pieces.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip()
    if rest.strip():
        pieces.append(rest)
    return pieces


def markers(content: str) -> tuple[str, ...]:
    """The ``{{markers}}`` of a template's content, each once, in the order they first appear."""
    return tuple(dict.fromkeys(m.strip() for m in MARKER.findall(content)))


def template_ref(template: Template, default_language: str, known: TemplateRef | None = None) -> TemplateRef:
    """Where a template goes on WhatsApp (module docstring); ``known`` is the review's record."""
    external = (template.external_id or "").strip()
    if external:
        name, _, language = external.partition(":")
        language = language.strip() or default_language
        if not re.fullmatch(r"[a-z0-9_]{1,512}", name.strip()) or not _LANGUAGE.match(language):
            raise MessengerError(
                f"template {template.id}: external_id {external!r} is not 'name:language' "
                "(a WhatsApp template name of a-z, 0-9 and _, like 'order_ready:en_US')"
            )
        if known is not None and known.name == name.strip() and known.language == language:
            return known
        return TemplateRef(name.strip(), language, markers(template.content))
    if known is not None:
        return known
    raise MessengerError(
        f"template {template.id} has no WhatsApp name: set its external_id to 'name:language' "
        "(the approved WhatsApp template, e.g. 'order_ready:en_US'), or send it to review from amoCRM"
    )


def template_body(template: Template, ref: TemplateRef) -> dict[str, Any]:
    """The ``template`` object: name, language and the text parameters of header and body."""
    values = {p.key.strip().strip("{}").strip(): p.value for p in template.params}
    components: list[dict[str, Any]] = []
    for kind, names in (("header", ref.header), ("body", ref.body)):
        if not names:
            continue
        missing = [n for n in names if n not in values]
        if missing:
            listed = ", ".join("{{" + m + "}}" for m in missing)
            raise MessengerError(f"template {template.id} has no value for {listed}")
        if ref.named:
            parameters = [{"type": "text", "parameter_name": n, "text": values[n]} for n in names]
        else:
            parameters = [{"type": "text", "text": values[n]} for n in names]
        components.append({"type": kind, "parameters": parameters})
    body: dict[str, Any] = {"name": ref.name, "language": {"code": ref.language}}
    if components:
        body["components"] = components
    return body


def _too_long(what: str, text: str, limit: int) -> MessengerError:
    return MessengerError(
        f"the list message does not fit WhatsApp: {what} {text[:40]!r} has {len(text)} characters, at most {limit}"
    )


def _list_action(lm: ListMessage) -> dict[str, Any]:
    """The interactive list's ``action``, or a MessengerError naming the first limit it breaks."""
    sections = lm.sections
    rows = [row for section in sections for row in section.rows]
    if not 1 <= len(sections) <= LIST_SECTIONS_LIMIT:
        raise MessengerError(
            f"the list message does not fit WhatsApp: it has {len(sections)} sections, WhatsApp takes 1 to 10"
        )
    if not 1 <= len(rows) <= LIST_ROWS_LIMIT:
        raise MessengerError(
            f"the list message does not fit WhatsApp: it has {len(rows)} rows, WhatsApp takes 1 to 10 "
            "in all sections together"
        )
    if not lm.button.strip():
        raise MessengerError("the list message does not fit WhatsApp: the button text is empty")
    if len(lm.button) > LIST_BUTTON_LIMIT:
        raise _too_long("the button", lm.button, LIST_BUTTON_LIMIT)
    ids: set[str] = set()
    out = []
    for section in sections:
        if len(sections) > 1 and not section.title.strip():
            raise MessengerError("the list message does not fit WhatsApp: with several sections each needs a title")
        if len(section.title) > ROW_TITLE_LIMIT:
            raise _too_long("section title", section.title, ROW_TITLE_LIMIT)
        section_rows = []
        for row in section.rows:
            if not row.title.strip():
                raise MessengerError("the list message does not fit WhatsApp: a row has no title")
            if len(row.title) > ROW_TITLE_LIMIT:
                raise _too_long("row title", row.title, ROW_TITLE_LIMIT)
            if len(row.description) > ROW_DESCRIPTION_LIMIT:
                raise _too_long("row description", row.description, ROW_DESCRIPTION_LIMIT)
            row_id = row.callback_data or row.title
            if len(row_id) > ROW_ID_LIMIT:
                raise _too_long("row data", row_id, ROW_ID_LIMIT)
            if row_id in ids:
                raise MessengerError(f"the list message does not fit WhatsApp: two rows share the data {row_id!r}")
            ids.add(row_id)
            item = {"id": row_id, "title": row.title}
            if row.description:
                item["description"] = row.description
            section_rows.append(item)
        entry: dict[str, Any] = {"rows": section_rows}
        if section.title:
            entry["title"] = section.title
        out.append(entry)
    return {"button": lm.button, "sections": out}


def _list(lm: ListMessage) -> dict[str, Any]:
    if not lm.body.strip():
        raise MessengerError("the list message does not fit WhatsApp: its body text is empty")
    if len(lm.body) > BODY_LIMIT:
        raise _too_long("the body", lm.body, BODY_LIMIT)
    for what, text in (("the header", lm.header), ("the footer", lm.footer)):
        if len(text) > HEADER_LIMIT:
            raise _too_long(what, text, HEADER_LIMIT)
    interactive: dict[str, Any] = {"type": "list", "body": {"text": lm.body}, "action": _list_action(lm)}
    if lm.header:
        interactive["header"] = {"type": "text", "text": lm.header}
    if lm.footer:
        interactive["footer"] = {"text": lm.footer}
    return interactive


def _first_repeated(values: list[str]) -> str | None:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            return value
        seen.add(value)
    return None


def _buttons(text: str, rows: tuple[tuple[Button, ...], ...], list_button: str) -> tuple[dict[str, Any] | None, str]:
    """The interactive object for the buttons (or ``None``), and the text with url buttons as links."""
    buttons = [b for row in rows for b in row]
    links = [f"{b.text}: {b.url}" for b in buttons if b.url]
    text = "\n".join(line for line in [text, *links] if line)
    choices = [b for b in buttons if not b.url]
    if not choices:
        return None, text
    body = text or _BUTTONS_BODY
    if len(body) > BODY_LIMIT:
        raise MessengerError(
            f"the message with buttons does not fit WhatsApp: its text has {len(body)} characters, at most {BODY_LIMIT}"
        )
    ids = [(b.callback_data or b.text) for b in choices]
    if same := _first_repeated(ids):
        raise MessengerError(f"the buttons do not fit WhatsApp: two buttons send back the same data {same!r}")
    # Meta refuses reply buttons whose titles repeat (131009 "Buttons titles must be unique"), and
    # as list rows the client could not tell them apart either: the manager learns why instead.
    if same := _first_repeated([b.text for b in choices]):
        raise MessengerError(
            f"the buttons do not fit WhatsApp: two buttons have the same text {same!r}; give each button its own text"
        )
    fits_buttons = len(choices) <= REPLY_BUTTONS_LIMIT and all(
        len(b.text) <= BUTTON_TITLE_LIMIT and len(i) <= BUTTON_ID_LIMIT for b, i in zip(choices, ids, strict=True)
    )
    if fits_buttons:
        reply_action = {
            "buttons": [
                {"type": "reply", "reply": {"id": i, "title": b.text}} for b, i in zip(choices, ids, strict=True)
            ]
        }
        return {"type": "button", "body": {"text": body}, "action": reply_action}, ""
    if len(choices) > LIST_ROWS_LIMIT:
        raise MessengerError(
            f"the buttons do not fit WhatsApp: {len(choices)} buttons, at most 3 as buttons or 10 as a list"
        )
    rows_out = []
    for button, row_id in zip(choices, ids, strict=True):
        if len(row_id) > ROW_ID_LIMIT or len(button.text) > ROW_DESCRIPTION_LIMIT:
            raise MessengerError(
                f"the buttons do not fit WhatsApp: the button {button.text[:40]!r} is longer than "
                f"{ROW_DESCRIPTION_LIMIT} characters"
            )
        row: dict[str, str] = {"id": row_id, "title": button.text}
        if len(button.text) > ROW_TITLE_LIMIT:
            row = {"id": row_id, "title": button.text[: ROW_TITLE_LIMIT - 1] + "…", "description": button.text}
        rows_out.append(row)
    action: dict[str, Any] = {"button": list_button, "sections": [{"rows": rows_out}]}
    return {"type": "list", "body": {"text": body}, "action": action}, ""


def _media(attachment: Attachment, caption: str) -> dict[str, Any]:
    kind = MEDIA_TYPES[attachment.kind]
    media: dict[str, Any] = {"link": attachment.url}
    if caption and kind in _CAPTIONED:
        media["caption"] = caption
    if kind == "document" and attachment.file_name:
        media["filename"] = attachment.file_name
    return {"type": kind, kind: media}


def plan_message(
    message: OutgoingMessage,
    *,
    template: TemplateRef | None = None,
    link_previews: bool = True,
    list_button: str = "Choose",
) -> list[Part]:
    """The requests that send ``message``; ``template`` is where its template goes on WhatsApp (if any)."""
    target = message.chat or message.phone
    assert target is not None
    common = base(target)
    context = {"context": {"message_id": message.reply_to}} if message.reply_to else {}

    def part(content: dict[str, Any], attachment: Attachment | None = None) -> Part:
        first = not parts
        return Part({**common, **(context if first else {}), **content}, attachment)

    parts: list[Part] = []
    if message.template is not None and template is not None:
        parts.append(part({"type": "template", "template": template_body(message.template, template)}))
        return parts
    text = message.text
    if message.list_message is not None:
        parts.append(part({"type": "interactive", "interactive": _list(message.list_message)}))
        text = ""
    elif message.buttons:
        interactive, text = _buttons(text, message.buttons, list_button)
        if interactive is not None:
            parts.append(part({"type": "interactive", "interactive": interactive}))
    for attachment in message.attachments:
        kind = MEDIA_TYPES[attachment.kind]
        caption = text if text and kind in _CAPTIONED and len(text) <= CAPTION_LIMIT else ""
        if caption:
            text = ""
        parts.append(part(_media(attachment, caption), attachment))
    for piece in split_text(text):
        parts.append(
            part({"type": "text", "text": {"body": piece, "preview_url": bool(link_previews and _URL.search(piece))}})
        )
    if not parts:
        raise MessengerError("nothing to send: the message has no text, media, list or template")
    return parts
