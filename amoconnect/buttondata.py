"""Button data that does not fit a messenger, kept under a short key so that a press gives it back whole.

amoCRM's Salesbot recognises a press by the exact ``callback_data`` it sent, but messengers hold
little: Telegram's ``callback_data`` takes 1-64 bytes, VK's button ``payload`` 255 characters.
An adapter asks :meth:`ButtonData.shorten` for what to put on the button: the value itself when
it fits, else a key of :data:`KEY_LENGTH` ASCII characters (``~b:`` and a hash of the value)
under which the store keeps the value for :data:`RETENTION` (a later send of the same value
extends it; the store's hourly prune drops what ran out). On a press the adapter asks
:meth:`ButtonData.resolve` for the value: the data itself, the value kept under a key, or
``None`` when the key is no longer kept (the adapter tells the client the button expired and
relays nothing, or relays what the client visibly sent without ``callback_data``).
:meth:`ButtonData.keyed` and :meth:`ButtonData.resolved` do both for a whole message and for
parsed events.

A value that fits but starts like a key (``~b:``) is kept under a key too, so a pressed button's
data is never mistaken for what it is not.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Sequence
from typing import Final, Protocol

import msgspec

from .model import InboundEvent, InboundMessage, OutgoingMessage

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

    async def keyed(self, message: OutgoingMessage, fits: Callable[[str], bool]) -> OutgoingMessage:
        """``message`` with each button's and list row's ``callback_data`` :meth:`shorten` ed.

        A button without ``callback_data`` sends its text back: a text that does not fit gets a key
        as its ``callback_data``. An empty ``callback_data`` is left alone (a messenger sends the
        text for it).
        """

        async def short(value: str) -> str:
            return await self.shorten(value, fits) if value else value

        buttons = []
        for row in message.buttons:
            kept = []
            for button in row:
                data = button.callback_data if button.callback_data is not None else button.text
                if not button.url and (key := await short(data)) != data:
                    button = msgspec.structs.replace(button, callback_data=key)
                kept.append(button)
            buttons.append(tuple(kept))
        menu = message.list_message
        if menu is not None:
            sections = []
            for section in menu.sections:
                rows = [
                    r
                    if (key := await short(r.callback_data)) == r.callback_data
                    else msgspec.structs.replace(r, callback_data=key)
                    for r in section.rows
                ]
                sections.append(msgspec.structs.replace(section, rows=tuple(rows)))
            menu = msgspec.structs.replace(menu, sections=tuple(sections))
        return msgspec.structs.replace(message, buttons=tuple(buttons), list_message=menu)

    async def resolved(self, events: Sequence[InboundEvent]) -> list[InboundEvent]:
        """``events`` with each press's ``callback_data`` :meth:`resolve` d; a press of a key no longer
        kept stays what the client visibly sent (its text), without ``callback_data``."""
        out: list[InboundEvent] = []
        for event in events:
            if isinstance(event, InboundMessage) and event.callback_data is not None:
                value = await self.resolve(event.callback_data)
                if value != event.callback_data:
                    event = msgspec.structs.replace(event, callback_data=value)
            out.append(event)
        return out
