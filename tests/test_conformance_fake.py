"""The conformance suite passes for the reference messenger ``fake`` (fakechat), as every plugin's must.

Three variants cover what fakechat itself does not declare: one with a reply window (WhatsApp's
case: templates once it closes), one that brings in what the business writes in fakechat's own
app (echoes), one with no capabilities at all (text only: the rest skips).
"""

from __future__ import annotations

from amoconnect.capabilities import Capability, ReactionSet
from amoconnect.testing.conformance import MessengerConformance
from amoconnect.testing.fake_messenger import FakeChatAdapter


class WindowedFakeChat(FakeChatAdapter):
    """fakechat with WhatsApp's 24-hour reply window."""

    name = "fake_windowed"
    capabilities = FakeChatAdapter.capabilities | {Capability.time_window}
    reply_window = 24 * 3600.0


class EchoingFakeChat(FakeChatAdapter):
    """fakechat whose business also writes from the messenger's own app."""

    name = "fake_echoing"
    capabilities = FakeChatAdapter.capabilities | {Capability.echoes}


class PlainFakeChat(FakeChatAdapter):
    """fakechat declaring nothing but text."""

    name = "fake_plain"
    capabilities = frozenset[Capability]()
    reactions = ReactionSet()


class TestConformance(MessengerConformance):
    plugin = "amoconnect.testing.fake_messenger"


class TestWindowedConformance(MessengerConformance):
    plugin = WindowedFakeChat


class TestEchoingConformance(MessengerConformance):
    plugin = EchoingFakeChat


class TestPlainConformance(MessengerConformance):
    plugin = PlainFakeChat
