"""Secrets at rest: accounts' tokens and sources' secret settings are encrypted in the store, and keys rotate."""

from __future__ import annotations

from pathlib import Path

import pytest
import tomli_w
from click.testing import CliRunner
from rig import CHANNEL, base_config

from amoconnect.cli import main
from amoconnect.config import parse_config
from amoconnect.errors import ConfigError, StoreError
from amoconnect.registry import Registry
from amoconnect.secretbox import SecretBox, new_key
from amoconnect.store import build_store
from amoconnect.store.registry import AccountRecord, SourceRecord
from amoconnect.testing.stores import table_rows

pytestmark = pytest.mark.anyio

TOKEN = "access-token-that-must-not-be-on-disk"
REFRESH = "refresh-token-that-must-not-be-on-disk"
BOT = "bot-token-that-must-not-be-on-disk"
SHOP = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"


def on_disk(store: object) -> str:
    return repr(table_rows(store, "accounts", "*")) + repr(table_rows(store, "sources", "*"))


async def fill(registry: Registry) -> None:
    await registry.put_account(
        AccountRecord(name="shop", amojo_id=SHOP, scope_id=f"{CHANNEL}_{SHOP}", token=TOKEN, refresh_token=REFRESH)
    )
    await registry.put_source(
        SourceRecord(
            name="bot2",
            plugin="loopback",
            account="shop",
            external_id="bot2",
            settings={"secret": BOT, "files": {"f": "not secret"}, "nested": {"api_key": BOT + "-2"}},
        )
    )


async def test_secrets_are_sealed_on_disk_and_open_in_memory(tmp_path: Path) -> None:
    config = parse_config(base_config(tmp_path, store={**base_config(tmp_path)["store"], "secret_keys": new_key()}))
    store = build_store(config.store)
    await store.open()
    try:
        registry = Registry(config, store)
        await registry.load()
        await fill(registry)
        disk = on_disk(store)
        assert TOKEN not in disk and REFRESH not in disk and BOT not in disk and "enc:" in disk
        assert "not secret" in disk  # only secret-like settings are sealed
        fresh = Registry(config, store)
        await fresh.load()
        account, source = fresh.account("shop"), fresh.source("bot2")
        assert account is not None and (account.token, account.refresh_token) == (TOKEN, REFRESH)
        assert source is not None and source.settings["secret"] == BOT
        assert source.settings["nested"]["api_key"] == BOT + "-2"
        # A reader without the key is told so, not handed ciphertext.
        keyless = Registry(parse_config(base_config(tmp_path)), store)
        with pytest.raises(StoreError, match="secret_keys is empty"):
            await keyless.load()
        wrong = parse_config(base_config(tmp_path, store={**base_config(tmp_path)["store"], "secret_keys": new_key()}))
        with pytest.raises(StoreError, match=r"opens with none of store\.secret_keys"):
            await Registry(wrong, store).load()
        # A removed source keeps no secrets at rest.
        await registry.remove_source("bot2")
        assert BOT not in on_disk(store) and "enc:" in on_disk(store)
    finally:
        await store.close()


def test_a_key_is_rotated_by_putting_a_new_one_first_and_resealing(tmp_path: Path) -> None:
    import anyio

    old, new = new_key(), new_key()
    settings = base_config(tmp_path)
    path = tmp_path / "amoconnect.toml"

    def write(keys: str) -> None:
        path.write_text(tomli_w.dumps({**settings, "store": {**settings["store"], "secret_keys": keys}}))

    async def sealed_with_old() -> None:
        config = parse_config({**settings, "store": {**settings["store"], "secret_keys": old}})
        store = build_store(config.store)
        await store.open()
        try:
            registry = Registry(config, store)
            await registry.load()
            await fill(registry)
        finally:
            await store.close()

    anyio.run(sealed_with_old)
    write(f"{new},{old}")
    result = CliRunner().invoke(main, ["accounts", "reseal", "--config", str(path)])
    assert result.exit_code == 0, result.output
    assert "2 records sealed" in result.output
    write(new)  # the old key dropped: everything still opens
    shown = CliRunner().invoke(main, ["accounts", "show", "shop", "--config", str(path), "--json"])
    assert shown.exit_code == 0, shown.output
    assert TOKEN not in shown.output and '"state": "active"' in shown.output


def test_a_key_that_is_not_fernet_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"store\.secret_keys: not a list of Fernet keys"):
        parse_config(base_config(tmp_path, store={**base_config(tmp_path)["store"], "secret_keys": "short"}))
    assert SecretBox("").seal("plain") == "plain"  # no keys: kept as given
