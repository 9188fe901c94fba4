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
from amoconnect.config import load_config
from amoconnect.registry import Registry
from amoconnect.store import opened_store
from amoconnect.store.registry import SourceRecord
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
        assert {r["kind"] for r in rows} == {"fixed"}


async def test_list_shows_the_file_s_fixed_sources_the_store_s_run_time_ones_and_amocrm_s(tmp_path: Path) -> None:
    fake = FakeAmoCRM()
    token = fake.add_long_lived_token()
    async with serve_app(fake.app) as url:
        data = base_config(tmp_path)
        data["accounts"][0].update(rest_url=url, token=token)
        data["sources"] = [{"name": "bot", "plugin": "fake", "account": "main", "default": True}]
        config_path = tmp_path / "amoconnect.toml"
        config_path.write_text(tomli_w.dumps(data))
        assert (await cli("sources", "sync", "--config", str(config_path))).exit_code == 0
        config = load_config(config_path)
        async with opened_store(config.store) as store:
            registry = Registry(config, store)
            await registry.load()
            for name, state, error in (("added", "active", None), ("refused", "failing", "Unauthorized")):
                await registry.put_source(
                    SourceRecord(
                        name=name, plugin="fake", account="main", external_id=name, state=state, last_error=error
                    )
                )
        fake.sources[999] = {
            "id": 999,
            "external_id": "elsewhere",
            "name": "Elsewhere",
            "pipeline_id": 1,
            "default": False,
        }
        listed = await cli("sources", "list", "--config", str(config_path), "--json")
        assert listed.exit_code == 0, listed.output
        rows = {r["external_id"]: r for r in json.loads(listed.output)}
        assert {k: (r["instance"], r["kind"], r["source_state"], r["state"]) for k, r in rows.items()} == {
            "bot": ("bot", "fixed", "active", "synced"),
            "added": ("added", "run-time", "active", "not in amoCRM"),
            "refused": ("refused", "run-time", "failing", "not in amoCRM"),
            "elsewhere": (None, None, None, "not configured"),
        }
        assert rows["refused"]["last_error"] == "Unauthorized"
        text = await cli("sources", "list", "--config", str(config_path))
        assert "fake/added (run-time, active)" in text.output and "fake/bot (fixed, active)" in text.output
        assert "fake/refused (run-time, failing) (not in amoCRM): Unauthorized" in text.output
        nobody = await cli("sources", "list", "--config", str(config_path), "--account", "nobody")
        assert nobody.exit_code == 1 and "no account named 'nobody'" in nobody.output


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


async def test_sync_needs_rest_credentials_and_list_shows_ours_without_them(tmp_path: Path) -> None:
    config = tmp_path / "amoconnect.toml"
    config.write_text(tomli_w.dumps(base_config(tmp_path)))
    result = await cli("sources", "sync", "--config", str(config))
    assert result.exit_code == 1
    assert "need subdomain (or rest_url) and token" in result.output
    listed = await cli("sources", "list", "--config", str(config), "--json")
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.output)
    assert {r["instance"] for r in rows} == {"lb", "wa", "pl"}
    assert {r["state"] for r in rows} == {"amoCRM not asked: no REST token"}
