"""``amoconnect sources sync|list`` against the fake amoCRM REST API on a real port."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest
import tomli_w
from click.testing import CliRunner
from rig import base_config

from amoconnect.cli import main
from amoconnect.testing.fake_amocrm import FakeAmoCRM
from amoconnect.testing.servers import serve_app

pytestmark = pytest.mark.anyio


async def cli(*args: str) -> Any:
    runner = CliRunner()
    return await anyio.to_thread.run_sync(lambda: runner.invoke(main, list(args)))


async def test_sync_creates_then_updates_then_lists(tmp_path: Path) -> None:
    fake = FakeAmoCRM()
    token = fake.add_long_lived_token()
    async with serve_app(fake.app) as url:
        data = base_config(tmp_path)
        data["accounts"][0].update(rest_url=url, token=token)
        data["sources"] = [
            {"name": "bot", "plugin": "fake", "account": "main", "default": True, "title": "Support bot"},
            {"name": "bot2", "plugin": "fake", "account": "main", "external_id": "second bot"},
        ]
        config = tmp_path / "amoconnect.toml"
        config.write_text(tomli_w.dumps(data))
        first = await cli("sources", "sync", "--config", str(config))
        assert first.exit_code == 0, first.output
        assert "created ['bot', 'second bot']" in first.output
        by_external = {s["external_id"]: s for s in fake.sources.values()}
        assert by_external["bot"]["name"] == "Support bot"
        assert by_external["bot"]["default"] is True
        data["sources"][0]["title"] = "Renamed bot"
        config.write_text(tomli_w.dumps(data))
        second = await cli("sources", "sync", "--config", str(config))
        assert "updated ['bot']" in second.output
        assert "unchanged ['second bot']" in second.output
        assert len(fake.sources) == 2
        listed = await cli("sources", "list", "--config", str(config), "--json")
        rows = json.loads(listed.output)
        assert {(r["external_id"], r["state"]) for r in rows} == {("bot", "synced"), ("second bot", "synced")}


async def test_sync_declares_the_whatsapp_service_from_capabilities() -> None:
    from amoconnect.amocrm import AmoCRMClient
    from amoconnect.capabilities import Capability
    from amoconnect.config import parse_config
    from amoconnect.sources import desired_sources, sync_sources
    from amoconnect.testing.fake_messenger import FakeChatAdapter

    class WhatsAppLike(FakeChatAdapter):
        name = "walike"
        amocrm_service = "whatsapp"
        capabilities = FakeChatAdapter.capabilities - {Capability.list_messages}

    config = parse_config(
        {
            "channel": {"id": "c", "secret": "s"},
            "accounts": [{"name": "main", "amojo_id": "a"}],
            "sources": [{"name": "num1", "plugin": "walike", "account": "main", "external_id": "+7 999 000"}],
        }
    )
    fake = FakeAmoCRM()
    async with serve_app(fake.app) as url, AmoCRMClient(url, tokens=fake.add_long_lived_token()) as rest:
        wanted = desired_sources(config, config.accounts[0], {"walike": WhatsAppLike})
        await sync_sources(rest, wanted)
    (created,) = fake.sources.values()
    assert created["services"][0]["type"] == "whatsapp"
    assert created["services"][0]["params"] == {"waba": True}


async def test_sources_need_rest_credentials(tmp_path: Path) -> None:
    config = tmp_path / "amoconnect.toml"
    config.write_text(tomli_w.dumps(base_config(tmp_path)))
    result = await cli("sources", "list", "--config", str(config))
    assert result.exit_code == 1
    assert "need subdomain (or rest_url) and token" in result.output
