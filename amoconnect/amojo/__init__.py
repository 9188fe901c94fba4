"""The amoCRM Chats API (amojo): wire models and webhook parsing (spec ``amojo.md``)."""

from __future__ import annotations

from .wire import *  # noqa: F403 - the package re-exports the wire API as is
from .wire import __all__ as _wire_all

__all__ = list(_wire_all)
