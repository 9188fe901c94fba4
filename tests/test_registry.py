"""Accounts and sources in the store: rows and revisions, the in-memory registry, and a connector
that follows changes made at run time (by itself, or behind its back by another process)."""

from __future__ import annotations

import hashlib
import hmac
import time
from pathlib import Path

import msgspec
import pytest
from rig import ACCOUNT, CHANNEL, SECRET, base_config, message, rig

from amoconnect.amojo import wire
from amoconnect.config import parse_config
from amoconnect.errors import RegistryError, StoreError
from amoconnect.registry import Registry
from amoconnect.store.base import Store
from amoconnect.store.registry import AccountRecord, RegistryRows, SourceRecord
from amoconnect.store.sqlite import SQLiteStore
from amoconnect.testing.kit import eventually
from amoconnect.testing.stores import postgres_url, sql_session

pytestmark = pytest.mark.anyio

OTHER = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
OTHER_SCOPE = f"{CHANNEL}_{OTHER}"


def account(name: str = "shop", amojo_id: str = OTHER, **fields: object) -> AccountRecord:
    return AccountRecord(
        name=name,
        amojo_id=amojo_id,
        scope_id=f"{CHANNEL}_{amojo_id}",
        subdomain=name,
        domain="kommo.com",
        rest_url=f"https://{name}.kommo.com",
        token="access-1",
        refresh_token="refresh-1",
        **fields,  # type: ignore[arg-type]
    )


def source(name: str = "bot2", account: str = "shop", **fields: object) -> SourceRecord:
    values: dict[str, object] = {"plugin": "loopback", "external_id": name, "settings": {"secret": f"{name}-secret"}}
    values.update(fields)
    return SourceRecord(name=name, account=account, **values)  # type: ignore[arg-type]


def rows(store: Store) -> RegistryRows:
    assert isinstance(store, RegistryRows)
    return store


# -- the rows ------------------------------------------------------------------------------
async def test_rows_come_back_as_written_and_only_after_the_revision_asked(store: Store) -> None:
    r = rows(store)
    assert (await r.registry_changes(0)).revision == 0
    first = await r.put_account(account(installed_at=1234.5))
    second = await r.put_source(source(settings={"secret": "s", "files": {"a": "b"}}, amocrm_source_id=42))
    assert second > first
    everything = await r.registry_changes(0)
    assert everything.revision == second
    (stored_account,) = everything.accounts
    assert stored_account == account(installed_at=1234.5)
    (stored_source,) = everything.sources
    assert stored_source == source(settings={"secret": "s", "files": {"a": "b"}}, amocrm_source_id=42)
    later = await r.registry_changes(first)
    assert (later.accounts, [s.name for s in later.sources]) == ([], ["bot2"])
    assert await r.registry_changes(second) == type(later)(second, [], [])


async def test_a_removed_source_is_seen_going_and_its_names_are_free_again(store: Store) -> None:
    r = rows(store)
    await r.put_account(account())
    await r.put_source(source())
    seen = (await r.registry_changes(0)).revision
    await r.put_source(source(state="removed"))
    (gone,) = (await r.registry_changes(seen)).sources
    assert gone.state == "removed"
    await r.put_source(source(name="bot3", external_id="bot2"))  # the external id is free again
    await r.put_source(source(external_id="again"))  # and so is the name
    assert {s.name for s in (await r.registry_changes(0)).sources} == {"bot2", "bot3"}


async def test_two_live_sources_cannot_share_an_external_id_in_one_account(store: Store) -> None:
    r = rows(store)
    await r.put_account(account())
    await r.put_source(source(external_id="same"))
    before = (await r.registry_changes(0)).revision
    with pytest.raises(StoreError):
        await r.put_source(source(name="bot3", external_id="same"))
    assert (await r.registry_changes(0)).revision == before  # the refused write took no revision
    await r.put_source(source(name="bot4", account="other", external_id="same"))  # another account may


async def test_a_state_outside_the_list_is_refused_by_the_table(store: Store) -> None:
    r = rows(store)
    with pytest.raises(StoreError):
        await r.put_account(account(state="gone"))
    with pytest.raises(StoreError):
        await r.put_source(source(state="paused"))


# -- the registry --------------------------------------------------------------------------
async def test_the_file_s_entries_are_fixed_and_refused_as_targets_of_a_change(store: Store, tmp_path: Path) -> None:
    registry = Registry(parse_config(base_config(tmp_path)), store)
    await registry.load()
    main = registry.account_by_scope(f"{CHANNEL}_{ACCOUNT}")
    assert main is not None and main.fixed and main.name == "main"
    assert {s.name for s in registry.sources()} == {"lb", "wa", "pl"}
    assert all(s.fixed for s in registry.sources())
    with pytest.raises(RegistryError, match="'main' is fixed by the configuration file"):
        await registry.put_account(account(name="main"))
    with pytest.raises(RegistryError, match="'main' is fixed"):
        await registry.set_account_state("main", "disconnected")
    with pytest.raises(RegistryError, match="'lb' is fixed"):
        await registry.remove_source("lb")
    with pytest.raises(RegistryError, match="'lb' is fixed"):
        await registry.put_source(source(name="lb", account="main"))
    with pytest.raises(RegistryError, match="already account 'main'"):
        await registry.put_account(account(name="copy", amojo_id=ACCOUNT))
    with pytest.raises(RegistryError, match="no account named 'nobody'"):
        await registry.put_source(source(account="nobody"))
    with pytest.raises(RegistryError, match="'wa-number' is source 'wa'"):
        await registry.put_source(source(account="main", external_id="wa-number"))
    with pytest.raises(RegistryError, match="no source named 'ghost'"):
        await registry.remove_source("ghost")
    assert (await rows(store).registry_changes(0)).revision == 0  # nothing was written
    # A stored source may belong to a fixed account.
    changes = await registry.put_source(source(account="main"))
    assert [s.name for s in changes.sources] == ["bot2"]
    assert registry.source("bot2") == source(account="main")


async def test_a_write_is_in_effect_at_once_in_its_process_and_after_a_refresh_in_another(
    store: Store, tmp_path: Path
) -> None:
    config = parse_config(base_config(tmp_path))
    here, there = Registry(config, store), Registry(config, store)
    await here.load()
    await there.load()
    await here.put_account(account())
    await here.put_source(source())
    assert here.account("shop") is not None and here.source("bot2") is not None
    assert there.account("shop") is None
    changes = await there.refresh()
    assert [a.name for a in changes.accounts] == ["shop"] and [s.name for s in changes.sources] == ["bot2"]
    assert there.account_by_scope(OTHER_SCOPE) == here.account("shop")
    installed = there.account("shop")
    assert installed is not None and installed.installed_at > time.time() - 60
    await here.remove_source("bot2")
    assert here.source("bot2") is None
    assert [s.state for s in (await there.refresh()).sources] == ["removed"]
    assert there.source("bot2") is None
    assert not await there.refresh()  # nothing new


async def test_a_stored_entry_with_a_fixed_name_is_ignored_for_the_file_s(store: Store, tmp_path: Path) -> None:
    await rows(store).put_account(account(name="main"))
    await rows(store).put_source(source(name="lb", account="shop"))
    registry = Registry(parse_config(base_config(tmp_path)), store)
    await registry.load()
    main, lb = registry.account("main"), registry.source("lb")
    assert main is not None and main.fixed and main.amojo_id == ACCOUNT
    assert lb is not None and lb.fixed and lb.account == "main"


async def test_without_a_registry_in_the_store_only_the_file_s_entries_exist(tmp_path: Path) -> None:
    registry = Registry(parse_config(base_config(tmp_path)), object())
    await registry.load()
    assert [a.name for a in registry.accounts()] == ["main"]
    with pytest.raises(RegistryError, match="keeps no accounts or sources"):
        await registry.put_account(account())


# -- a running connector -------------------------------------------------------------------
def _hook(account_id: str, text: str = "hello") -> bytes:
    hook = wire.MessageHook(
        account_id=account_id,
        time=int(time.time()),
        message=wire.HookMessage(
            conversation=wire.Conversation(id="amo-chat-1"),
            source=wire.Source(external_id="bot2"),
            sender=wire.HookSender(id="manager-1", name="Manager"),
            receiver=wire.HookReceiver(id="client-1", phone="+10000000000", name="Client"),
            timestamp=int(time.time()),
            msec_timestamp=int(time.time() * 1000),
            message=wire.HookMessageBody(id=f"m-{text}", type="text", text=text),
        ),
    )
    return msgspec.json.encode(hook)


def sign_body(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha1).hexdigest()


async def test_a_source_added_at_run_time_serves_at_once_and_stops_when_removed(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        registry = r.runtime.registry
        await registry.put_account(account())
        r.amojo.connect(OTHER, webhook_url="http://amoconnect/amocrm/:scope_id")
        await registry.put_source(source())
        instance = r.runtime.routing.get("bot2")
        assert instance is not None and instance.adapter.started and instance.scope_id == OTHER_SCOPE
        response = await r.inbound(message("c9", "1", "from a new bot"), instance="bot2", secret="bot2-secret")
        assert response.status_code == 200
        (arrived,) = await eventually(lambda: r.amojo.messages_in("bot2:c9", scope_id=OTHER_SCOPE))
        assert arrived.content.text == "from a new bot"
        # Its settings change: the instance is built again with them.
        await registry.put_source(source(settings={"secret": "rotated"}))
        assert (await r.inbound(message("c9", "2"), instance="bot2", secret="bot2-secret")).status_code == 401
        assert (await r.inbound(message("c9", "3"), instance="bot2", secret="rotated")).status_code == 200
        await registry.remove_source("bot2")
        assert r.runtime.routing.get("bot2") is None
        gone = await r.client.post("/hooks/loopback/bot2", content=b"[]")
        assert (gone.status_code, gone.json()["error"]) == (404, "unknown_instance")
        # The file's sources were never touched.
        assert {i.name for i in r.runtime.routing} == {"lb", "wa", "pl"}


async def test_an_account_added_at_run_time_takes_webhooks_and_refuses_them_once_disconnected(
    tmp_path: Path,
) -> None:
    async with rig(tmp_path) as r:
        registry = r.runtime.registry
        body = _hook(OTHER)
        headers = {"X-Signature": sign_body(SECRET, body), "Content-Type": "application/json"}
        unknown = await r.client.post(f"/amocrm/{OTHER_SCOPE}", content=body, headers=headers)
        assert (unknown.status_code, unknown.json()["error"]) == (404, "unknown_scope")
        await registry.put_account(account())
        await registry.put_source(source())
        accepted = await r.client.post(f"/amocrm/{OTHER_SCOPE}", content=body, headers=headers)
        assert accepted.status_code == 200, accepted.text
        (sent,) = await eventually(lambda: r.adapter("bot2").sent)
        assert sent.text == "hello"
        await registry.set_account_state("shop", "disconnected")
        assert r.runtime.routing.get("bot2") is None  # its sources stop with it
        body = _hook(OTHER, "after")
        headers = {"X-Signature": sign_body(SECRET, body), "Content-Type": "application/json"}
        refused = await r.client.post(f"/amocrm/{OTHER_SCOPE}", content=body, headers=headers)
        assert (refused.status_code, refused.json()["error"]) == (410, "disconnected")
        await registry.set_account_state("shop", "active")
        assert r.runtime.routing.get("bot2") is not None  # and come back with it


async def test_a_source_that_cannot_be_built_is_left_out_and_nothing_else_is_affected(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        registry = r.runtime.registry
        await registry.put_account(account())
        await registry.put_source(source(name="bad", settings={"secret": 5}))
        await registry.put_source(source(name="alien", plugin="nonesuch"))
        await registry.put_source(source())
        assert r.runtime.routing.get("bad") is None and r.runtime.routing.get("alien") is None
        assert r.runtime.routing.get("bot2") is not None
        assert (await r.inbound(message("c1", "1"))).status_code == 200


async def test_a_write_behind_the_connector_s_back_is_followed_without_a_notification(tmp_path: Path) -> None:
    """Another process's write (a CLI command, a fleet's node whose notification was lost) is found
    by the periodic check: here written with SQL alone, so nothing notifies."""
    async with rig(tmp_path) as r:
        store = r.runtime.store
        revision = r.runtime.registry.revision
        with sql_session(store) as run:
            run("UPDATE registry_revision SET revision = revision + 1")
            run(
                "INSERT INTO accounts VALUES ('quiet', 'q-id', 'q-scope', 'quiet', 'amocrm.ru', "
                f"'https://quiet.amocrm.ru', '', '', NULL, 'active', 1.0, FALSE, 'create_lead', {revision + 1}, "
                "NULL, NULL)"
            )
            run("UPDATE registry_revision SET revision = revision + 1")
            run(
                "INSERT INTO sources VALUES ('quietbot', 'quiet', 'loopback', 'qb', '', FALSE, '{}', '{}', NULL, "
                f"'active', NULL, {revision + 2})"
            )
        instance = await eventually(lambda: r.runtime.routing.get("quietbot"))
        assert instance.scope_id == "q-scope" and instance.adapter.started


@pytest.mark.skipif(postgres_url() is None, reason="a fleet shares a PostgreSQL store (--postgres)")
async def test_a_change_in_one_node_of_a_fleet_is_in_effect_in_the_other(tmp_path: Path) -> None:
    shared = base_config(tmp_path / "a")["store"]
    async with rig(tmp_path / "a", store=shared) as a, rig(tmp_path / "b", store=shared) as b:
        await a.runtime.registry.put_account(account())
        await a.runtime.registry.put_source(source())
        instance = await eventually(lambda: b.runtime.routing.get("bot2"), within=5)
        assert instance.adapter.started
        assert (await b.inbound(message("c1", "1"), instance="bot2", secret="bot2-secret")).status_code == 200
        await a.runtime.registry.remove_source("bot2")
        await eventually(lambda: b.runtime.routing.get("bot2") is None, within=5)


async def test_a_second_sqlite_writer_s_source_reaches_the_running_connector(tmp_path: Path) -> None:
    if postgres_url() is not None:
        pytest.skip("SQLite only: the PostgreSQL fleet has its own test")
    async with rig(tmp_path) as r:
        other = SQLiteStore(tmp_path / "store.sqlite3")
        await other.open(recover=False)  # as a command beside the connector opens it
        try:
            cli = Registry(r.runtime.config, other)
            await cli.load()
            await cli.put_account(account())
            await cli.put_source(source())
        finally:
            await other.close()
        instance = await eventually(lambda: r.runtime.routing.get("bot2"))
        assert instance.adapter.started
