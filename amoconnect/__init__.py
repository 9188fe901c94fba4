"""amoconnect: connect messengers to amoCRM / Kommo through the Chats API (amojo)."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
