"""Button data that does not fit a messenger, kept under a short key so that a press gives it back whole.

amoCRM's Salesbot recognises a press by the exact ``callback_data`` it sent, but messengers hold
little: Telegram's ``callback_data`` takes 1-64 bytes, VK's button ``payload`` 255 characters.
An adapter asks :meth:`ButtonData.shorten` for what to put on the button: the value itself when
it fits, else a key of :data:`KEY_LENGTH` ASCII characters (``~b:`` and a hash of the value)
under which the store keeps the value for :data:`RETENTION` (a later send of the same value
extends it; the store's hourly prune drops what ran out). On a press the adapter asks
:meth:`ButtonData.resolve` for the value: the data itself, the value kept under a key, or
``None`` when the key is no longer kept (the adapter tells the client the button expired and
relays nothing).

A value that fits but starts like a key (``~b:``) is kept under a key too, so a pressed button's
data is never mistaken for what it is not.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from typing import Final, Protocol

__all__ = ["KEY_LENGTH", "KEY_PREFIX", "RETENTION", "ButtonData", "ButtonDataRows", "MemoryButtonRows", "key_of"]

KEY_PREFIX: Final = "~b:"
"""How a key starts."""
KEY_LENGTH: Final = len(KEY_PREFIX) + 22
"""Characters (ASCII, so also bytes) of a key: the prefix and 128 bits of SHA-256 in URL-safe base64."""
RETENTION: Final = 90 * 86400.0
"""Seconds a long value stays pressable after its last send: 90 days, longer than a Salesbot
usually waits for an answer; a press after that is told the button expired."""


class ButtonDataRows(Protocol):
    """Where the values are kept: the store (SQLite or PostgreSQL, shared by a fleet) or memory."""

    async def put_button_data(self, key: str, value: str, keep_for: float) -> None:
        """Keep ``value`` under ``key`` for ``keep_for`` seconds from now (again: from now again)."""
        ...

    async def button_data(self, key: str) -> str | None:
        """The value under ``key``; ``None`` when never kept or its time ran out."""
        ...


class MemoryButtonRows:
    """Values in this process only, for an adapter run outside a runtime (tests, scripts)."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}

    async def put_button_data(self, key: str, value: str, keep_for: float) -> None:
        self.values[key] = value

    async def button_data(self, key: str) -> str | None:
        return self.values.get(key)


def key_of(value: str) -> str:
    """The key a value is kept under: the same value always gets the same key."""
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).digest()[:16]
    return KEY_PREFIX + base64.urlsafe_b64encode(digest).decode().rstrip("=")


class ButtonData:
    """``context.button_data``: put long button data on a button and get it back when pressed."""

    def __init__(self, rows: ButtonDataRows | None = None, *, retention: float = RETENTION) -> None:
        self.rows: ButtonDataRows = rows if rows is not None else MemoryButtonRows()
        self.retention = retention

    async def shorten(self, value: str, fits: Callable[[str], bool]) -> str:
        """What to put on a button that must send back ``value``: ``value`` when ``fits(value)``, else a key.

        ``fits`` says whether a string fits the messenger's button (Telegram: 1-64 UTF-8 bytes);
        a key is :data:`KEY_LENGTH` ASCII characters, which every messenger with buttons takes.
        Only a key costs a store write.
        """
        if fits(value) and not value.startswith(KEY_PREFIX):
            return value
        key = key_of(value)
        await self.rows.put_button_data(key, value, self.retention)
        return key

    async def resolve(self, data: str) -> str | None:
        """The value a pressed button's ``data`` stands for; ``None`` when it is a key no longer kept."""
        if not data.startswith(KEY_PREFIX):
            return data
        return await self.rows.button_data(data)
