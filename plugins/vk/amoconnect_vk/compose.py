"""Neutral sends → ``messages.send`` calls. Pure logic: the uploads happen before, in the adapter.

One amoCRM message may become several VK messages: text longer than 4,096 characters is split,
and more than ten attachments need more than one message. Attachments ride on the first part
with the first chunk of text, the quote (``forward`` with ``is_reply``) too; the keyboard rides on
the last. Every part has its own ``random_id`` derived from amoCRM's message id and the part's
number, so a retried send is recognised by VK part by part.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from amoconnect.errors import MessengerError
from amoconnect.model import OutgoingMessage

from .vkapi import (
    MAX_ATTACHMENTS,
    MAX_MESSAGE_LENGTH,
    buttons_keyboard,
    list_keyboard,
    random_id,
    split_text,
)

__all__ = ["message_text", "plan_message", "reply_forward"]


def reply_forward(peer_id: int, conversation_message_id: int) -> str:
    """The ``forward`` parameter that quotes a message of the dialog (a reply)."""
    return json.dumps({"peer_id": peer_id, "conversation_message_ids": [conversation_message_id], "is_reply": True})


def message_text(message: OutgoingMessage) -> tuple[str, str | None]:
    """The text of a send and its keyboard (JSON), if it has buttons or is a list message."""
    if message.list_message is not None:
        text, keyboard = list_keyboard(message.list_message)
        return "\n".join(part for part in (message.text, text) if part), keyboard
    if message.buttons:
        return message.text, buttons_keyboard(message.buttons)
    return message.text, None


def plan_message(
    message: OutgoingMessage,
    peer_id: int,
    attachments: Sequence[str],
    *,
    limit: int = MAX_MESSAGE_LENGTH,
) -> list[dict[str, Any]]:
    """The ``messages.send`` parameters of each part of ``message``, in order.

    ``attachments`` are the uploaded media as VK names them (``photo-1_2``, ``doc-1_3``); text
    is split into chunks of at most ``limit`` characters.
    """
    text, keyboard = message_text(message)
    chunks = split_text(text, limit)
    groups = [list(attachments[i : i + MAX_ATTACHMENTS]) for i in range(0, len(attachments), MAX_ATTACHMENTS)]
    if not chunks and not groups:
        raise MessengerError("the message has neither text nor media to send to VK")
    parts: list[dict[str, Any]] = []
    count = max(len(chunks), 1) + max(len(groups) - 1, 0)
    for index in range(count):
        params: dict[str, Any] = {"peer_ids": peer_id, "random_id": random_id(message.dedup_key, index)}
        if index == 0:
            if chunks:
                params["message"] = chunks[0]
            if groups:
                params["attachment"] = ",".join(groups[0])
            if message.reply_to and message.reply_to.isdigit():
                params["forward"] = reply_forward(peer_id, int(message.reply_to))
        elif index < len(groups):
            params["attachment"] = ",".join(groups[index])
        else:
            params["message"] = chunks[index - max(len(groups) - 1, 0)]
        parts.append(params)
    if keyboard is not None:
        parts[-1]["keyboard"] = keyboard
    return parts
