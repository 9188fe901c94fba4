"""amoconnect-whatsapp: the WhatsApp Business Cloud API for amoconnect.

Each ``[[sources]]`` entry with ``plugin = "whatsapp"`` is one business phone number:
:class:`~amoconnect_whatsapp.adapter.WhatsAppAdapter` with settings
:class:`~amoconnect_whatsapp.adapter.WhatsAppSettings`. :mod:`amoconnect_whatsapp.review`
answers amoCRM's template reviews with Meta's verdicts, and :mod:`amoconnect_whatsapp.fake` is a
faithful fake of the Graph API for tests and ``amoconnect run --plugin whatsapp --sandbox``.
"""

from __future__ import annotations

from .adapter import WhatsAppAdapter, WhatsAppSettings
from .review import ReviewSettings

__all__ = ["ReviewSettings", "WhatsAppAdapter", "WhatsAppSettings"]
