{% set P = cookiecutter.__class_prefix %}
"""The installed distribution: its entry point loads the plugin by name, as ``amoconnect run`` does."""

from __future__ import annotations

import pytest
import structlog
from amoconnect.plugins import collect_messengers, describe_plugins, get_plugin_manager
from amoconnect.sandbox import run_sandbox

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


@pytest.mark.anyio
async def test_the_sandbox_shows_a_conversation_and_its_status() -> None:
    """What ``amoconnect run --sandbox --plugin {{ cookiecutter.messenger_slug }} --rounds 1`` logs."""
    with structlog.testing.capture_logs() as logs:
        await run_sandbox(NAME, rounds=1, interval=0)  # on a free port
    events = [entry["event"] for entry in logs]
    assert "4. the client got the answer in the messenger" in events
{% if cookiecutter.with_delivery_receipts or cookiecutter.with_read_receipts %}
    assert "5. amoCRM shows the delivery status" in events
{% else %}
    assert "5. amoCRM shows no delivery status: the messenger reports none" in events
{% endif %}
    assert not [entry for entry in logs if entry["log_level"] in ("warning", "error")]
