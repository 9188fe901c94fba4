"""The ``amoconnect`` entry point of the Telegram plugin: registers the ``telegram`` messenger."""

from __future__ import annotations

from amoconnect import hookimpl
from amoconnect.hookspecs import RegisterMessenger

__all__ = ["register_messengers"]


@hookimpl
def register_messengers(register: RegisterMessenger) -> None:
    """Register the ``telegram`` messenger."""
    from .adapter import TelegramAdapter

    register(TelegramAdapter)
