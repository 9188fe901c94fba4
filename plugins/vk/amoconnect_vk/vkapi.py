"""Facts of the VK API (version 5.199) that the adapter and the fake share, and the pure logic around them.

Reactions: VK names its message reactions by number (``reaction_id``), not by emoji;
:data:`REACTIONS` is the one table both directions use. Ids and the emoji they stand for are
from VK's reaction picker (knowledge: ``messages.getReactionsAssets`` lists the current set);
an id missing here is skipped with a log line, never guessed.

Idempotency: ``messages.send`` takes a ``random_id`` (an int32) and ``wall.createComment`` a
``guid``; both are derived from amoCRM's message id (:func:`random_id`, :func:`comment_guid`),
so a retried send is recognised by VK instead of delivered twice.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any, Final

from amoconnect.errors import MessengerError, RateLimited
from amoconnect.model import Button, ListMessage

__all__ = [
    "API_VERSION",
    "BLOCKED_CODES",
    "CALLBACK_EVENTS",
    "CHATS_FROM",
    "DOWNLOAD_LIMIT",
    "EMOJI_REACTIONS",
    "INLINE_MAX_BUTTONS",
    "INLINE_MAX_ROWS",
    "KEYBOARD_MAX_BUTTONS",
    "KEYBOARD_MAX_ROWS",
    "MAX_ATTACHMENTS",
    "MAX_BUTTONS_PER_ROW",
    "MAX_COMMENT_LENGTH",
    "MAX_LABEL_LENGTH",
    "MAX_MESSAGE_LENGTH",
    "MAX_PAYLOAD_LENGTH",
    "REACTIONS",
    "VkApiError",
    "button_payload",
    "buttons_keyboard",
    "callback_data",
    "comment_guid",
    "error_for",
    "fits_payload",
    "list_keyboard",
    "parse_post_key",
    "post_key",
    "post_url",
    "random_id",
    "split_text",
]

API_VERSION: Final = "5.199"
"""The API version every call and every event speaks."""
MAX_MESSAGE_LENGTH: Final = 4096
"""Longest ``message`` of one ``messages.send`` that the adapter sends (VK's method page says 4,096
characters; the JSON schema allows 9,000 — we keep to the lower). Longer texts are split."""
MAX_COMMENT_LENGTH: Final = 4096
"""Longest text of one comment the adapter posts; longer answers become several comments."""
MAX_ATTACHMENTS: Final = 10
"""Attachments one message may carry."""
MAX_LABEL_LENGTH: Final = 40
"""Longest label of a keyboard button."""
MAX_PAYLOAD_LENGTH: Final = 255
"""Longest ``payload`` of a keyboard button (a JSON string)."""
MAX_BUTTONS_PER_ROW: Final = 5
"""Buttons in one keyboard row."""
INLINE_MAX_ROWS: Final = 6
"""Rows of an inline keyboard (one under a message)."""
INLINE_MAX_BUTTONS: Final = 10
"""Buttons of an inline keyboard."""
KEYBOARD_MAX_ROWS: Final = 10
"""Rows of a regular keyboard (below the input field)."""
KEYBOARD_MAX_BUTTONS: Final = 40
"""Buttons of a regular keyboard."""
DOWNLOAD_LIMIT: Final = 200 * 1024 * 1024
"""Largest file the adapter downloads from VK (VK's own limit for documents)."""

CALLBACK_EVENTS: Final = (
    "message_new",
    "message_reply",  # "a new outcoming message" (VK API schema): capability echoes
    "message_edit",
    "message_allow",
    "message_deny",
    "message_read",
    "message_typing_state",
    "message_reaction_event",
    "wall_post_new",
    "wall_reply_new",
    "wall_reply_edit",
    "wall_reply_delete",
    "wall_reply_restore",
)
"""The event types the adapter subscribes to (Callback API server or Bots Long Poll)."""

CHATS_FROM: Final = 2_000_000_000
"""Peer ids from here on are group chats; below, a user's private dialog."""

REACTIONS: Final[dict[int, str]] = {
    1: "❤️",
    2: "🔥",
    3: "😂",
    4: "👍",
    5: "💩",
    6: "❓",
    7: "😭",
    8: "👎",
    9: "👌",
    10: "😡",
}
"""VK's ``reaction_id`` → emoji, the one table for both directions."""
EMOJI_REACTIONS: Final[dict[str, int]] = {emoji: number for number, emoji in REACTIONS.items()}
"""Emoji → VK's ``reaction_id``."""

BLOCKED_CODES: Final = frozenset({900, 901, 902})
"""Errors that mean the client cannot be written to privately (blacklist, no permission, privacy)."""

_RATE_LIMITS: Final = {6: 1.0, 9: 5.0, 29: 60.0}
"""Codes that ask us to slow down, with the pause we take before trying again."""
_BLOCKED_TEXT: Final = {
    900: "VK refuses: the client has blacklisted the community",
    901: (
        "VK refuses: the client has not allowed the community to message them (they never wrote to it "
        "and did not press 'Allow messages'); answer in the comments, or ask them to write first"
    ),
    902: "VK refuses: the client's privacy settings do not allow messages from the community",
}
_AUTH_TEXT: Final = "the community token is wrong, revoked or lacks rights; create a new one in Manage → API usage"


class VkApiError(MessengerError):
    """VK refused a call: ``code`` is its ``error_code``, ``description`` its ``error_msg`` (or our clearer text)."""

    code: int

    def __init__(self, description: str, *, code: int, retryable: bool = False, reason: str = "other") -> None:
        super().__init__(description, code=code, retryable=retryable, reason=reason)
        self.code = code


def error_for(code: int, message: str) -> MessengerError:
    """The exception for VK's error ``code`` with its ``error_msg``, in the neutral failure vocabulary.

    6, 9, 29 → :class:`~amoconnect.errors.RateLimited`; 10 → retryable; 900, 901, 902 →
    ``blocked`` (amoCRM 901) with a text a manager understands; 5, 27 → ``disabled`` (902);
    18, 936 → ``no_chat`` (904); anything else → ``other`` (905) with VK's own text.
    """
    if code in _RATE_LIMITS:
        return RateLimited(message or "Too many requests", retry_after=_RATE_LIMITS[code], code=code)
    if code == 10:
        return VkApiError(message or "Internal server error", code=code, retryable=True)
    if code in BLOCKED_CODES:
        return VkApiError(f"{_BLOCKED_TEXT[code]} ({message})", code=code, reason="blocked")
    if code in (5, 27):
        return VkApiError(f"{message}: {_AUTH_TEXT}", code=code, reason="disabled")
    if code in (18, 936):
        return VkApiError(message or "the user is gone", code=code, reason="no_chat")
    return VkApiError(message or f"VK error {code}", code=code)


# -- ids ------------------------------------------------------------------------------------------


def random_id(dedup_key: str, part: int = 0) -> int:
    """``messages.send``'s ``random_id`` for part ``part`` of the send ``dedup_key``: a positive int32."""
    digest = hashlib.sha256(f"amoconnect-vk\0{dedup_key}\0{part}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % 0x7FFFFFFF + 1


def comment_guid(dedup_key: str, part: int = 0) -> str:
    """``wall.createComment``'s ``guid`` for part ``part`` of the answer ``dedup_key``."""
    return hashlib.sha256(f"amoconnect-vk-comment\0{dedup_key}\0{part}".encode()).hexdigest()[:32]


def post_key(owner_id: int, post_id: int) -> str:
    """Our id of a wall post, as VK writes it in links: ``-123_45``."""
    return f"{owner_id}_{post_id}"


def parse_post_key(key: str) -> tuple[int, int]:
    """``(owner_id, post_id)`` of a :func:`post_key`; :class:`ValueError` for anything else."""
    owner, _, post = key.rpartition("_")
    return int(owner), int(post)


def post_url(key: str) -> str:
    """The public link of a post: ``https://vk.com/wall-123_45``."""
    return f"https://vk.com/wall{key}"


# -- text -----------------------------------------------------------------------------------------


def split_text(text: str, limit: int = MAX_MESSAGE_LENGTH) -> list[str]:
    """``text`` in chunks of at most ``limit`` characters, in order; ``[]`` for an empty text.

    A chunk ends at the last paragraph break, else line break, else space of its second half
    (the break itself is dropped); without one the text is cut hard.
    """
    chunks: list[str] = []
    rest = text
    while len(rest) > limit:
        window = rest[:limit]
        for separator in ("\n\n", "\n", " "):
            at = window.rfind(separator)
            if at > limit // 2:
                chunks.append(window[:at])
                rest = rest[at + len(separator) :]
                break
        else:
            chunks.append(window)
            rest = rest[limit:]
    if rest:
        chunks.append(rest)
    return chunks


# -- keyboards ------------------------------------------------------------------------------------


def button_payload(data: str) -> str:
    """The ``payload`` of a text button that sends ``data`` back: ``{"cb": data}``."""
    return json.dumps({"cb": data}, ensure_ascii=False)


def fits_payload(data: str) -> bool:
    """Whether a button can send ``data`` back as it is: its payload within VK's 255 characters."""
    return len(button_payload(data)) <= MAX_PAYLOAD_LENGTH


def callback_data(payload: str | None) -> str | None:
    """What a pressed button sends back: ``cb`` of our own payloads, else the payload as VK gave it."""
    if not payload:
        return None
    try:
        decoded = json.loads(payload)
    except ValueError:
        return payload
    if isinstance(decoded, dict) and isinstance(decoded.get("cb"), str):
        return str(decoded["cb"])
    return payload


def _label(text: str) -> str:
    text = " ".join(text.split()) or "…"
    return text if len(text) <= MAX_LABEL_LENGTH else text[: MAX_LABEL_LENGTH - 1] + "…"


def _button(button: Button) -> dict[str, Any]:
    if button.url:
        return {"action": {"type": "open_link", "link": button.url, "label": _label(button.text)}}
    data = button.callback_data if button.callback_data is not None else button.text
    return {"action": {"type": "text", "label": _label(button.text), "payload": button_payload(data)}}


def buttons_keyboard(rows: Sequence[Sequence[Button]]) -> str:
    """An inline keyboard of amoCRM's buttons (JSON): rows kept, cut to VK's limits.

    Data goes as it is: the adapter first puts data that does not :func:`fits_payload` under a short key.
    """
    kept: list[list[dict[str, Any]]] = []
    total = 0
    for row in rows[:INLINE_MAX_ROWS]:
        buttons = [_button(b) for b in row[:MAX_BUTTONS_PER_ROW]][: INLINE_MAX_BUTTONS - total]
        if buttons:
            kept.append(buttons)
            total += len(buttons)
    return json.dumps({"inline": True, "buttons": kept}, ensure_ascii=False)


def list_keyboard(menu: ListMessage) -> tuple[str, str]:
    """The text and keyboard of a list message: header, body and footer as text, one button per row.

    Up to six rows fit an inline keyboard under the message; more go on a one-time keyboard
    below the input field (ten rows); rows beyond that are listed in the text.
    """
    rows = [row for section in menu.sections for row in section.rows]
    inline = len(rows) <= INLINE_MAX_ROWS
    kept = rows if inline else rows[:KEYBOARD_MAX_ROWS]
    lines = [menu.header, menu.body, *(f"- {row.title}" for row in rows[len(kept) :]), menu.footer]
    buttons = [
        [{"action": {"type": "text", "label": _label(row.title), "payload": button_payload(row.callback_data)}}]
        for row in kept
    ]
    keyboard: dict[str, Any] = {"inline": True} if inline else {"one_time": True}
    keyboard["buttons"] = buttons
    return "\n".join(line for line in lines if line), json.dumps(keyboard, ensure_ascii=False)
