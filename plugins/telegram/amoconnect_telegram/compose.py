"""Neutral sends → the Bot API calls that make them. Pure logic.

:func:`plan_message` turns an :class:`~amoconnect.model.OutgoingMessage` into an ordered list
of :class:`Call` s:

- text over 4,096 UTF-16 units is split (:func:`~amoconnect_telegram.botapi.split_text`), order kept;
- each attachment becomes ``sendPhoto`` / ``sendVideo`` / ``sendDocument`` / ``sendVoice`` /
  ``sendAudio`` / ``sendSticker`` with the amoCRM URL for Telegram to fetch; the text rides on the
  first one as its caption when it fits 1,024 units, otherwise the caption holds the first part and
  the rest follows as text messages (a sticker takes no caption: its text follows);
- buttons become an inline keyboard (``url`` buttons stay links, the others become callback
  buttons whose ``callback_data`` is cut to 64 bytes), and a list message becomes its text plus
  one callback button per row; the keyboard goes on the last message;
- a reply quotes through ``reply_parameters`` on the first message
  (``allow_sending_without_reply``, so a deleted original does not fail the send).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from amoconnect.errors import MessengerError
from amoconnect.model import Attachment, Button, ListMessage, OutgoingMessage

from .botapi import MAX_CALLBACK_DATA_BYTES, MAX_CAPTION_LENGTH, split_text, truncate_bytes, utf16_length

__all__ = ["MEDIA_METHODS", "Call", "chat_param", "inline_keyboard", "message_text", "plan_message"]

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


def _button(button: Button) -> dict[str, str] | None:
    if not button.text:
        return None
    if button.url:
        return {"text": button.text, "url": button.url}
    data = truncate_bytes(button.callback_data or button.text, MAX_CALLBACK_DATA_BYTES)
    return {"text": button.text, "callback_data": data or "-"}


def inline_keyboard(buttons: tuple[tuple[Button, ...], ...], list_message: ListMessage | None) -> dict[str, Any] | None:
    """The ``reply_markup`` of amoCRM buttons and a list message's rows, or ``None`` when there are none."""
    rows: list[list[dict[str, str]]] = []
    for row in buttons:
        made = [b for b in map(_button, row) if b is not None]
        if made:
            rows.append(made)
    if list_message is not None:
        for section in list_message.sections:
            for item in section.rows:
                made_row = _button(Button(text=item.title, callback_data=item.callback_data))
                if made_row is not None:
                    rows.append([made_row])
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
    keyboard = inline_keyboard(message.buttons, message.list_message)
    if keyboard is not None:
        calls[-1].params["reply_markup"] = keyboard
    return calls
