"""amoconnect-vk: VK communities for amoconnect.

Clients write to a community in private messages and comment on its wall posts; managers
answer both from amoCRM / Kommo. The adapter is :class:`~amoconnect_vk.adapter.VKAdapter`
(settings :class:`~amoconnect_vk.adapter.VKSettings`); :mod:`amoconnect_vk.fake` is a faithful
fake of the VK API, the Callback API and Bots Long Poll for tests and
``amoconnect run --plugin vk --sandbox``.
"""

from __future__ import annotations

from .adapter import VKAdapter, VKSettings

__all__ = ["VKAdapter", "VKSettings"]
