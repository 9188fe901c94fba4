"""The conformance suite passes for the reference messenger ``fake`` (fakechat), as every plugin's must."""

from __future__ import annotations

from amoconnect.testing.conformance import MessengerConformance


class TestConformance(MessengerConformance):
    plugin = "amoconnect.testing.fake_messenger"
