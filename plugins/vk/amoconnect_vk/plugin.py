"""The ``amoconnect`` entry point of the VK plugin: registers the ``vk`` messenger."""

from __future__ import annotations

from amoconnect import hookimpl
from amoconnect.hookspecs import RegisterMessenger

__all__ = ["register_messengers"]


@hookimpl
def register_messengers(register: RegisterMessenger) -> None:
    """Register the ``vk`` messenger."""
    from .adapter import VKAdapter

    register(VKAdapter)
