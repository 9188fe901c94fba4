"""``amoconnect accounts ...`` and ``amoconnect sources add|remove`` on the store beside a connector."""

from __future__ import annotations

import json
from collections.abc import Awaitable
from pathlib import Path

import anyio
import pytest
import tomli_w
from amoconnect_telegram.fake import FakeTelegram
from click.testing import CliRunner
from rig import CHANNEL, base_config

from amoconnect.cli import main
from amoconnect.config import load_config
from amoconnect.registry import Registry
from amoconnect.store import opened_store
from amoconnect.store.registry import AccountRecord
from amoconnect.testing.servers import serve_app

SHOP = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
BOT_TOKEN = "123456:secret-bot-token-never-shown"


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "amoconnect.toml"
    path.write_text(tomli_w.dumps(base_config(tmp_path)))

    async def install() -> None:
        config = load_config(path)
        async with opened_store(config.store) as store:
            registry = Registry(config, store)
            await registry.load()
            await registry.put_account(
                AccountRecord(
                    name="shop", amojo_id=SHOP, scope_id=f"{CHANNEL}_{SHOP}", subdomain="shop", token="t" * 20
                )
            )

    anyio.run(install)
    return path


def cli(config_file: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, [*args, "--config", str(config_file)])
    return result.exit_code, result.output


@pytest.mark.anyio
async def test_a_source_is_added_shown_and_removed_step_by_step(config_file: Path) -> None:
    """The removal unregisters the bot's webhook as the admin API's does, though no connector runs here."""
    telegram = FakeTelegram(BOT_TOKEN)
    async with serve_app(telegram.app) as api_url:

        def run(*args: str) -> Awaitable[tuple[int, str]]:
            return anyio.to_thread.run_sync(lambda: cli(config_file, *args))

        settings = json.dumps(telegram.settings(api_url))
        code, out = await run("sources", "add", "--account", "shop", "--name", "shop-bot", "--plugin", "telegram",
                              "--settings", settings, "--json")  # fmt: skip
        assert code == 0, out
        steps = [(s["step"], s["outcome"]) for s in json.loads(out)["steps"]]
        assert steps == [("settings", "done"), ("amocrm", "skipped"), ("record", "done"), ("messenger", "skipped")]
        assert BOT_TOKEN not in out
        code, out = await run("accounts", "show", "shop", "--json")
        shown = json.loads(out)
        assert [(s["name"], s["state"]) for s in shown["sources"]] == [("shop-bot", "active")]
        assert shown["sources"][0]["settings"]["token"].startswith("…") and BOT_TOKEN not in out
        assert shown["account"]["token"] == "…tttt"
        code, out = await run("accounts", "list")
        assert "main (fixed): active" in out and "shop: active" in out
        telegram.webhook_url = "https://amoconnect/hooks/telegram/shop-bot"  # as the running connector set it
        code, out = await run("sources", "remove", "shop-bot", "--account", "shop")
        assert code == 0, out
        assert "messenger: done: unregistered" in out and "record: done" in out
        assert telegram.webhook_url == ""  # Telegram sends the bot's updates nowhere now
        code, out = await run("accounts", "show", "shop", "--json")
        assert json.loads(out)["sources"] == []


@pytest.mark.anyio
async def test_a_webhook_the_messenger_will_not_remove_is_reported_and_the_source_still_goes(
    config_file: Path,
) -> None:
    def run(*args: str) -> Awaitable[tuple[int, str]]:
        return anyio.to_thread.run_sync(lambda: cli(config_file, *args))

    telegram = FakeTelegram(BOT_TOKEN)
    async with serve_app(telegram.app) as api_url:
        settings = json.dumps(telegram.settings(api_url, token="999:" + "x" * 30))  # a token Telegram refuses
        add = ["sources", "add", "--account", "shop", "--name", "gone-bot", "--plugin", "telegram"]
        code, out = await run(*add, "--settings", settings)
        assert code == 0, out
        code, out = await run("sources", "remove", "gone-bot", "--account", "shop")
    assert code == 1 and "messenger: failed" in out and "record: done" in out, out
    assert "x" * 30 not in out  # the token is not quoted back
    code, out = await run("accounts", "show", "shop", "--json")
    assert json.loads(out)["sources"] == []


def test_bad_input_is_refused_with_the_reason_and_nothing_written(config_file: Path) -> None:
    add = ["sources", "add", "--account", "shop", "--name", "b", "--plugin", "telegram"]
    code, out = cli(config_file, *add, "--settings", '{"token": 5}')
    assert code == 1 and "settings.token" in out
    code, out = cli(config_file, *add, "--settings", "{nope")
    assert code == 2 and "not JSON" in out
    code, out = cli(config_file, *add, "--settings", "@/nonexistent/file.json")
    assert code == 2 and "cannot read" in out
    code, out = cli(config_file, "sources", "add", "--account", "nobody", "--name", "b", "--plugin", "telegram")
    assert code == 1 and "no account named 'nobody'" in out
    code, out = cli(config_file, "sources", "remove", "lb", "--account", "main")
    assert code == 1 and "fixed by the configuration file" in out
    code, out = cli(config_file, "accounts", "show", "shop", "--json")
    assert json.loads(out)["sources"] == []


def test_an_account_is_disconnected_and_a_fixed_one_refused(config_file: Path) -> None:
    code, out = cli(config_file, "accounts", "disconnect", "shop")
    assert (code, out.strip()) == (0, "shop: disconnected")
    code, out = cli(config_file, "accounts", "show", "shop")
    assert "shop: disconnected" in out
    code, out = cli(config_file, "accounts", "disconnect", "main")
    assert code == 1 and "fixed by the configuration file" in out
