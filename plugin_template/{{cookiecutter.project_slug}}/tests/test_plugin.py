{% set P = cookiecutter.__class_prefix %}
"""The installed distribution: its entry point loads the plugin by name, as ``amoconnect run`` does."""

from __future__ import annotations

from amoconnect.plugins import collect_messengers, describe_plugins, get_plugin_manager

from {{ cookiecutter.package_name }}.adapter import (
    {{ P }}Adapter as Adapter,
)

NAME = "{{ cookiecutter.messenger_slug }}"


def test_the_entry_point_registers_the_messenger() -> None:
    pm = get_plugin_manager(only=NAME)
    assert collect_messengers(pm) == {NAME: Adapter}
    (described,) = describe_plugins(pm)
    assert described["distribution"] == "{{ cookiecutter.project_slug }}"
    (messenger,) = described["messengers"]
    assert messenger["capabilities"] == sorted(Adapter.capabilities)


def test_the_sandbox_has_a_fake() -> None:
    assert Adapter.sandbox_factory is not None
