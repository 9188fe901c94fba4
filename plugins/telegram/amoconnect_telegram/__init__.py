"""amoconnect-telegram: Telegram bots for amoconnect.

Clients write to a bot; managers answer from amoCRM / Kommo. The adapter is
:class:`~amoconnect_telegram.adapter.TelegramAdapter` (settings
:class:`~amoconnect_telegram.adapter.TelegramSettings`); :mod:`amoconnect_telegram.fake` is a
faithful fake of the Bot API for tests and ``amoconnect run --plugin telegram --sandbox``.
"""

from __future__ import annotations

from .adapter import TelegramAdapter, TelegramSettings

__all__ = ["TelegramAdapter", "TelegramSettings"]
