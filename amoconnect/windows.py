"""Reply windows and failure texts: what the manager is told when a message cannot go. Pure logic.

A messenger with capability ``time_window`` accepts free text only within ``reply_window``
seconds of the client's last message (WhatsApp: 24 h). Outside it, only a template may go
(capability ``templates``); otherwise the message fails with status -1 / 905 and a text
saying when the window closed (spec §6, §9).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from .capabilities import Capability

__all__ = ["ERROR_CODES", "failure_for", "window_closed_at", "window_closed_text"]

ERROR_CODES: dict[str, int] = {
    "blocked": 901,
    "disabled": 902,
    "internal": 903,
    "no_chat": 904,
    "window_closed": 905,
    "rate_limited": 905,
    "other": 905,
}
"""Neutral failure reason → amojo ``error_code``; 905 shows the ``error`` text to the manager."""

_DEFAULT_TEXT = {
    "blocked": "the client blocked the account or deleted the chat",
    "disabled": "the integration is disabled on the messenger's side",
    "internal": "amoconnect failed internally",
    "no_chat": "the messenger cannot create this chat (no such user or number)",
    "window_closed": "the reply window is closed; send an approved template",
    "rate_limited": "the messenger kept refusing: too many messages",
    "other": "the messenger refused the message",
}


def window_closed_at(
    capabilities: frozenset[Capability],
    reply_window: float | None,
    last_client_at: float | None,
    *,
    window_disabled: bool = False,
) -> float | None:
    """When the reply window closed, if it is closed now (0 when the client never wrote); ``None`` while open."""
    if window_disabled or Capability.time_window not in capabilities or reply_window is None:
        return None
    if last_client_at is None:
        return 0.0
    closes = last_client_at + reply_window
    return closes if closes <= time.time() else None


def window_closed_text(closed_at: float, window: float) -> str:
    """The manager's explanation of a message refused outside the window."""
    hours = window / 3600
    length = f"{hours:g}-hour" if hours >= 1 else f"{window:g}-second"
    if closed_at <= 0:
        return f"the client has not written yet, so the {length} reply window is closed; send an approved template"
    when = datetime.fromtimestamp(closed_at, UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"the {length} reply window closed at {when}; send an approved template"


def failure_for(reason: str, text: str) -> tuple[int, str]:
    """amojo's ``error_code`` and ``error`` text for a neutral failure reason and the messenger's own text."""
    code = ERROR_CODES.get(reason, 905)
    message = text.strip() or _DEFAULT_TEXT.get(reason, _DEFAULT_TEXT["other"])
    return code, message[:1000]
