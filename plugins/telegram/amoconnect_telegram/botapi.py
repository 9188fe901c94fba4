"""Facts of the Telegram Bot API that the adapter and the fake share, and text splitting. Pure logic.

Lengths are counted in UTF-16 code units, as Telegram counts entity offsets: an emoji outside
the Basic Multilingual Plane counts twice. That is never more lenient than counting characters,
so a chunk that fits here fits Telegram.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = [
    "ALLOWED_UPDATES",
    "DOWNLOAD_LIMIT",
    "MAX_CALLBACK_ANSWER_LENGTH",
    "MAX_CALLBACK_DATA_BYTES",
    "MAX_CAPTION_LENGTH",
    "MAX_TEXT_LENGTH",
    "REACTION_EMOJI",
    "SECRET_TOKEN_HEADER",
    "SECRET_TOKEN_PATTERN",
    "TOKEN_PATTERN",
    "UPLOAD_LIMIT",
    "URL_FETCH_FAILURES",
    "split_text",
    "truncate_bytes",
    "utf16_length",
]

MAX_TEXT_LENGTH: Final = 4096
"""Longest ``text`` of ``sendMessage``."""
MAX_CAPTION_LENGTH: Final = 1024
"""Longest ``caption`` of a media message."""
MAX_CALLBACK_DATA_BYTES: Final = 64
"""Longest ``callback_data`` of an inline button, in UTF-8 bytes."""
MAX_CALLBACK_ANSWER_LENGTH: Final = 200
"""Longest ``text`` of ``answerCallbackQuery``, in characters."""
DOWNLOAD_LIMIT: Final = 20 * 1024 * 1024
"""Largest file a bot can download through ``getFile``."""
UPLOAD_LIMIT: Final = 50 * 1024 * 1024
"""Largest file a bot can upload (multipart)."""
SECRET_TOKEN_HEADER: Final = "X-Telegram-Bot-Api-Secret-Token"
"""Header in which Telegram repeats ``setWebhook``'s ``secret_token`` on every webhook request."""
SECRET_TOKEN_PATTERN: Final = re.compile(r"[A-Za-z0-9_-]{1,256}\Z")
"""What ``setWebhook`` accepts as ``secret_token``."""
TOKEN_PATTERN: Final = re.compile(r"[0-9]+:[A-Za-z0-9_-]+\Z")
"""The shape of a bot token from @BotFather: ``<bot id>:<secret>``."""
ALLOWED_UPDATES: Final = ("message", "edited_message", "callback_query", "message_reaction", "my_chat_member")
"""Update kinds the adapter asks for; ``message_reaction`` is only sent when asked for explicitly."""
URL_FETCH_FAILURES: Final = (
    "failed to get http url content",
    "wrong file identifier/http url specified",
    "wrong type of the web page content",
)
"""Lower-cased parts of the 400 descriptions Telegram gives when it cannot fetch a media URL itself."""

REACTION_EMOJI: Final = (
    "❤",
    "👍",
    "👎",
    "🔥",
    "🥰",
    "👏",
    "😁",
    "🤔",
    "🤯",
    "😱",
    "🤬",
    "😢",
    "🎉",
    "🤩",
    "🤮",
    "💩",
    "🙏",
    "👌",
    "🕊",
    "🤡",
    "🥱",
    "🥴",
    "😍",
    "🐳",
    "\u2764\u200d\U0001f525",
    "🌚",
    "🌭",
    "💯",
    "🤣",
    "⚡",
    "🍌",
    "🏆",
    "💔",
    "🤨",
    "😐",
    "🍓",
    "🍾",
    "💋",
    "🖕",
    "😈",
    "😴",
    "😭",
    "🤓",
    "👻",
    "\U0001f468\u200d\U0001f4bb",
    "👀",
    "🎃",
    "🙈",
    "😇",
    "😨",
    "🤝",
    "✍",
    "🤗",
    "🫡",
    "🎅",
    "🎄",
    "☃",
    "💅",
    "🤪",
    "🗿",
    "🆒",
    "💘",
    "🙉",
    "🦄",
    "😘",
    "💊",
    "🙊",
    "😎",
    "👾",
    "\U0001f937\u200d\u2642",
    "🤷",
    "\U0001f937\u200d\u2640",
    "😡",
)
"""The emoji ``ReactionTypeEmoji`` allows, spelled as Telegram spells them (no variation selectors)."""


def utf16_length(text: str) -> int:
    """Length of ``text`` in UTF-16 code units."""
    return len(text) + sum(1 for char in text if ord(char) > 0xFFFF)


def _fitting_prefix(text: str, limit: int) -> int:
    """The number of characters of ``text`` whose UTF-16 length is at most ``limit``."""
    units = 0
    for index, char in enumerate(text):
        units += 2 if ord(char) > 0xFFFF else 1
        if units > limit:
            return index
    return len(text)


def split_text(text: str, limit: int = MAX_TEXT_LENGTH) -> list[str]:
    """``text`` in chunks of at most ``limit`` UTF-16 units, in order; ``[]`` for an empty text.

    A chunk ends at the last paragraph break, else line break, else space of its second half;
    the break itself is dropped. Without one the text is cut hard.
    """
    chunks: list[str] = []
    rest = text
    while utf16_length(rest) > limit:
        cut = _fitting_prefix(rest, limit)
        window = rest[:cut]
        for separator in ("\n\n", "\n", " "):
            at = window.rfind(separator)
            if at > cut // 2:
                chunks.append(window[:at])
                rest = rest[at + len(separator) :]
                break
        else:
            chunks.append(window)
            rest = rest[cut:]
    if rest:
        chunks.append(rest)
    return chunks


def truncate_bytes(text: str, limit: int) -> str:
    """The longest prefix of ``text`` whose UTF-8 encoding is at most ``limit`` bytes."""
    encoded = text.encode()
    if len(encoded) <= limit:
        return text
    return encoded[:limit].decode(errors="ignore")
