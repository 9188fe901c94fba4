"""The core's conformance suite, run against this plugin with FakeVK as its own driver."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

import httpx
import pytest
from amoconnect.testing.conformance import MessengerConformance
from vk_peer import peer_check

from amoconnect_vk.fake import DEFAULT_GROUP, FakeVK


class TestConformance(MessengerConformance):
    plugin = "amoconnect_vk.plugin"
    post_id: ClassVar[str] = f"-{DEFAULT_GROUP}_501"

    @pytest.fixture(autouse=True)
    def _peer_checked(self) -> Iterator[None]:
        """Every event the fake emitted and every call it answered is checked with vkbottle-types."""
        self.fakes: list[FakeVK] = []
        yield
        for fake in self.fakes:
            peer_check(fake)

    def make_fake(self, http: httpx.AsyncClient) -> Any:
        fake = FakeVK(http=http, delivery_backoff=0.01)
        self.fakes.append(fake)
        return fake
