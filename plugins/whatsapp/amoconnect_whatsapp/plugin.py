"""The ``amoconnect`` entry point of the WhatsApp plugin: registers the ``whatsapp`` messenger."""

from __future__ import annotations

from amoconnect import hookimpl
from amoconnect.hookspecs import RegisterMessenger

__all__ = ["register_messengers"]


@hookimpl
def register_messengers(register: RegisterMessenger) -> None:
    """Register the ``whatsapp`` messenger."""
    from .adapter import WhatsAppAdapter

    register(WhatsAppAdapter)
