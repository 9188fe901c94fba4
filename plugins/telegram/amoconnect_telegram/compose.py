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
  goes on the last message. ``callback_data`` goes as it is: the adapter first puts a value over
  Telegram's 64 bytes under a short key (:func:`fits_callback_data`);
- a reply quotes through ``reply_parameters`` on the first message
  (``allow_sending_without_reply``, so a deleted original does not fail the send).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from amoconnect.errors import MessengerError
from amoconnect.model import Attachment, OutgoingMessage

from .botapi import MAX_CALLBACK_DATA_BYTES, MAX_CAPTION_LENGTH, split_text, utf16_length

__all__ = [
    "MEDIA_METHODS",
    "Call",
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


def _button(text: str, url: str | None, data: str) -> dict[str, str]:
    return {"text": text, "url": url} if url else {"text": text, "callback_data": data}


def inline_keyboard(message: OutgoingMessage) -> dict[str, Any] | None:
    """The ``reply_markup`` of the message's buttons and list rows, or ``None`` when there are none.

    A button sends back its ``callback_data``, else its text; a row its ``callback_data``, else its title.
    """
    rows = [[_button(b.text, b.url, b.callback_data or b.text) for b in row if b.text] for row in message.buttons]
    if message.list_message is not None:
        for section in message.list_message.sections:
            rows.extend([_button(r.title, None, r.callback_data or r.title)] for r in section.rows if r.title)
    rows = [row for row in rows if row]
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


def plan_message(message: OutgoingMessage) -> list[Call]:
    """The calls that send ``message``, in order; :class:`MessengerError` when there is nothing to send."""
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
    keyboard = inline_keyboard(message)
    if keyboard is not None:
        calls[-1].params["reply_markup"] = keyboard
    return calls
