"""Neutral sends → the Bot API calls that make them. Pure logic.

:func:`plan_message` turns an :class:`~amoconnect.model.OutgoingMessage` into an ordered list
of :class:`Call` s:

- text over 4,096 UTF-16 units is split (:func:`~amoconnect_telegram.botapi.split_text`), order kept;
- each attachment becomes ``sendPhoto`` / ``sendVideo`` / ``sendDocument`` / ``sendVoice`` /
  ``sendAudio`` / ``sendSticker`` with the amoCRM URL for Telegram to fetch; the text rides on the
  first one as its caption when it fits 1,024 units, otherwise the caption holds the first part and
  the rest follows as text messages (a sticker takes no caption: its text follows);
- buttons become an inline keyboard (``url`` buttons stay links, the others become callback
  buttons), and a list message becomes its text plus one callback button per row; the keyboard
  goes on the last message. A button's ``callback_data`` is what ``data`` maps its value to: the
  adapter puts a value over Telegram's 64 bytes under a short key (:func:`callback_values` lists
  the values);
- a reply quotes through ``reply_parameters`` on the first message
  (``allow_sending_without_reply``, so a deleted original does not fail the send).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from amoconnect.errors import MessengerError
from amoconnect.model import Attachment, OutgoingMessage

from .botapi import MAX_CALLBACK_DATA_BYTES, MAX_CAPTION_LENGTH, split_text, utf16_length

__all__ = [
    "MEDIA_METHODS",
    "Call",
    "callback_values",
    "chat_param",
    "fits_callback_data",
    "inline_keyboard",
    "message_text",
    "plan_message",
]

MEDIA_METHODS: dict[str, tuple[str, str]] = {
    "picture": ("sendPhoto", "photo"),
    "video": ("sendVideo", "video"),
    "file": ("sendDocument", "document"),
    "voice": ("sendVoice", "voice"),
    "audio": ("sendAudio", "audio"),
    "sticker": ("sendSticker", "sticker"),
}
"""Neutral media kind → (Bot API method, the parameter that takes the file)."""


@dataclass(frozen=True)
class Call:
    """One Bot API call of a send; ``attachment`` is set for a media call whose ``file_field`` holds its URL."""

    method: str
    params: dict[str, Any]
    attachment: Attachment | None = None
    file_field: str = ""


def chat_param(chat: str) -> int | str:
    """A chat id as the Bot API wants it: an integer, or a ``@username`` string."""
    try:
        return int(chat)
    except ValueError:
        return chat


def fits_callback_data(value: str) -> bool:
    """Whether ``value`` can be a button's ``callback_data`` as it is: 1-64 bytes of UTF-8."""
    return 1 <= len(value.encode("utf-8", "surrogatepass")) <= MAX_CALLBACK_DATA_BYTES


def _rows(message: OutgoingMessage) -> list[list[tuple[str, str | None, str]]]:
    """The keyboard's rows of (text, url or ``None``, the value a press sends back)."""
    rows = [[(b.text, b.url, b.callback_data or b.text) for b in row if b.text] for row in message.buttons]
    if message.list_message is not None:
        for section in message.list_message.sections:
            rows.extend([(item.title, None, item.callback_data or item.title)] for item in section.rows if item.title)
    return [row for row in rows if row]


def callback_values(message: OutgoingMessage) -> set[str]:
    """Every value a press on ``message``'s keyboard must send back."""
    return {value for row in _rows(message) for _, url, value in row if not url}


def inline_keyboard(message: OutgoingMessage, data: Mapping[str, str]) -> dict[str, Any] | None:
    """The ``reply_markup`` of the message's buttons and list rows, or ``None`` when there are none.

    ``data`` maps each of :func:`callback_values` to the ``callback_data`` that stands for it
    (a value missing from it goes as it is).
    """
    rows = [
        [
            {"text": text, "url": url} if url else {"text": text, "callback_data": data.get(value, value)}
            for text, url, value in row
        ]
        for row in _rows(message)
    ]
    return {"inline_keyboard": rows} if rows else None


def message_text(message: OutgoingMessage) -> str:
    """The text to send: the message's text, or for a list message its header, body and footer."""
    lm = message.list_message
    if lm is None:
        return message.text
    parts = [lm.header, lm.body or message.text, lm.footer]
    if message.text and message.text not in parts:
        parts.insert(0, message.text)
    return "\n\n".join(part for part in parts if part)


def _caption_and_rest(text: str, *, takes_caption: bool) -> tuple[str, list[str]]:
    if not text:
        return "", []
    if not takes_caption:
        return "", split_text(text)
    if utf16_length(text) <= MAX_CAPTION_LENGTH:
        return text, []
    caption, *_ = split_text(text, MAX_CAPTION_LENGTH)
    rest = text[len(caption) :].lstrip()
    return caption, split_text(rest)


def plan_message(message: OutgoingMessage, data: Mapping[str, str] | None = None) -> list[Call]:
    """The calls that send ``message``, in order; :class:`MessengerError` when there is nothing to send.

    ``data``: the ``callback_data`` of each button value, as for :func:`inline_keyboard`.
    """
    if message.chat is None:
        raise MessengerError(
            "Telegram bots cannot start a chat: the client has to write to the bot first", reason="no_chat"
        )
    chat_id = chat_param(message.chat)
    text = message_text(message)
    calls: list[Call] = []
    texts: list[str]
    if message.attachments:
        first_kind = message.attachments[0].kind
        caption, texts = _caption_and_rest(text, takes_caption=first_kind != "sticker")
        for index, attachment in enumerate(message.attachments):
            if attachment.url is None:
                raise MessengerError(f"the {attachment.kind} to send has no URL", reason="other")
            method, file_field = MEDIA_METHODS[attachment.kind]
            params: dict[str, Any] = {"chat_id": chat_id, file_field: attachment.url}
            if index == 0 and caption:
                params["caption"] = caption
            calls.append(Call(method, params, attachment=attachment, file_field=file_field))
    else:
        texts = split_text(text)
        if not texts:
            raise MessengerError("the message has neither text nor media", reason="other")
    calls.extend(Call("sendMessage", {"chat_id": chat_id, "text": chunk}) for chunk in texts)
    if message.reply_to is not None and message.reply_to.isdigit():
        calls[0].params["reply_parameters"] = {"message_id": int(message.reply_to), "allow_sending_without_reply": True}
    keyboard = inline_keyboard(message, data or {})
    if keyboard is not None:
        calls[-1].params["reply_markup"] = keyboard
    return calls
