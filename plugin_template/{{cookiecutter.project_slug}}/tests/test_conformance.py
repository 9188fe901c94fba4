"""amoconnect's conformance suite: the adapter does what its declarations promise, both ways."""

from __future__ import annotations

from amoconnect.testing.conformance import MessengerConformance


class TestConformance(MessengerConformance):
    plugin = "{{ cookiecutter.package_name }}.plugin"
