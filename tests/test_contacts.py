"""Linking new conversations to existing amoCRM contacts, and reading a chat's history back."""

from __future__ import annotations

import json
import types
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
import structlog
import tomli_w
from click.testing import CliRunner
from rig import ACCOUNT, SCOPE, Rig, base_config, eventually, message, rig

from amoconnect import hookimpl
from amoconnect.cli import main
from amoconnect.contacts import normalise_phone
from amoconnect.model import Person
from amoconnect.testing.fake_amocrm import FakeAmoCRM
from amoconnect.testing.servers import serve_app

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def linked_rig(tmp_path: Path, fake: FakeAmoCRM, policy: str = "link_existing") -> AsyncIterator[Rig]:
    token = fake.add_long_lived_token()
    async with serve_app(fake.app) as url:
        accounts = [{"name": "main", "amojo_id": ACCOUNT, "rest_url": url, "token": token, "chat_policy": policy}]
        async with rig(tmp_path, accounts=accounts) as r:
            yield r


def links(fake: FakeAmoCRM) -> list[dict[str, Any]]:
    return list(fake.chat_links.values())


def client(phone: str | None = None, email: str | None = None) -> Person:
    return Person(id="c1", name="Ann", phone=phone, email=email)


def test_phone_normalisation() -> None:
    assert normalise_phone("+7 (999) 123-45-67") == normalise_phone("89991234567") == "9991234567"


async def test_single_match_by_phone_links_the_chat_before_the_message(tmp_path: Path) -> None:
    fake = FakeAmoCRM()
    contact = fake.add_contact("Ann", phones=["+7 (999) 123-45-67"])
    fake.add_contact("Bob", phones=["+7 999 000-00-00"])
    async with linked_rig(tmp_path, fake) as r:
        await r.inbound(message("c1", "1", "hi", sender=client(phone="89991234567")))
        (stored,) = await eventually(lambda: r.amojo.messages_in("lb:c1"))
        ((linked_contact, chat_id),) = [(link["contact_id"], link["chat_id"]) for link in links(fake)]
        assert linked_contact == contact
        assert stored.chat_id == chat_id
        conversation = await eventually(
            lambda: r.runtime.store.conversation(SCOPE, "lb:c1")
        )  # committed just after the send
        assert conversation is not None
        assert conversation.amocrm_chat_id == chat_id
        # Only the first message of a conversation looks the client up.
        await r.inbound(message("c1", "2", "again", sender=client(phone="89991234567")))
        await eventually(lambda: len(r.amojo.messages_in("lb:c1")) == 2)
        assert len(fake.chat_links) == 1


async def test_match_by_email(tmp_path: Path) -> None:
    fake = FakeAmoCRM()
    contact = fake.add_contact("Ann", emails=["Ann@Example.com"])
    async with linked_rig(tmp_path, fake) as r:
        await r.inbound(message("c1", "1", sender=client(email="ann@example.com ")))
        await eventually(lambda: fake.chat_links)
        assert links(fake)[0]["contact_id"] == contact


@pytest.mark.parametrize("phones", [[], ["+7 999 123-45-67", "8 999 123 45 67"]], ids=["none", "several"])
async def test_no_single_match_falls_back_to_a_lead(tmp_path: Path, phones: list[str]) -> None:
    fake = FakeAmoCRM()
    for i, phone in enumerate(phones):
        fake.add_contact(f"Ann {i}", phones=[phone])
    async with linked_rig(tmp_path, fake) as r:
        with structlog.testing.capture_logs() as logs:
            await r.inbound(message("c1", "1", sender=client(phone="+79991234567")))
            await eventually(lambda: r.amojo.messages_in("lb:c1"))
        assert links(fake) == []
        (entry,) = [e for e in logs if "no single contact" in e["event"]]
        assert entry["matches"] == len(phones)


async def test_rest_down_never_blocks_the_message(tmp_path: Path) -> None:
    fake = FakeAmoCRM()
    fake.add_contact("Ann", phones=["+79991234567"])
    fake.fail_next(10, 503)
    async with linked_rig(tmp_path, fake) as r:
        with structlog.testing.capture_logs() as logs:
            await r.inbound(message("c1", "1", sender=client(phone="+79991234567")))
            await eventually(lambda: r.amojo.messages_in("lb:c1"), within=10)
        assert links(fake) == []
        assert any("contact lookup failed" in e["event"] for e in logs)


async def test_a_refused_token_pauses_the_lookups_instead_of_queueing_every_new_chat_behind_it(
    tmp_path: Path,
) -> None:
    fake = FakeAmoCRM()
    clients = [message(f"c{i}", "1", sender=Person(id=f"c{i}", phone=f"+7999000{i:04d}")) for i in range(31)]
    async with linked_rig(tmp_path, fake) as r:
        fake.access_tokens.clear()  # the account's admin revoked the token
        await r.inbound(clients[0])
        await eventually(lambda: r.amojo.messages)
        with structlog.testing.capture_logs() as logs:
            await r.inbound(*clients[1:])
            await eventually(lambda: len(r.amojo.messages) == 31)
    # One refusal; the thirty others are skipped at once instead of each queueing for the account's
    # 7 requests/s only to be refused the same way.
    assert [request.status for request in fake.requests] == [401]
    assert [e["event"] for e in logs].count("contact lookup skipped: the REST API refused the account's token") == 30


async def test_rate_limit_answers_are_waited_out(tmp_path: Path) -> None:
    fake = FakeAmoCRM()
    contact = fake.add_contact("Ann", phones=["+79991234567"], emails=["ann@example.com"])
    fake.fail_next(1, 429)
    async with linked_rig(tmp_path, fake) as r:
        await r.inbound(message("c1", "1", sender=client(phone="+79991234567", email="ann@example.com")))
        await eventually(lambda: fake.chat_links, within=10)
        assert links(fake)[0]["contact_id"] == contact


async def test_a_plugin_names_the_contact(tmp_path: Path) -> None:
    fake = FakeAmoCRM()
    contact = fake.add_contact("Known from a deep link")
    plugin = types.ModuleType("deeplink")

    @hookimpl
    def find_contact(conversation: Any, person: Person) -> int | None:
        return contact if person.id == "c1" else None

    plugin.find_contact = find_contact  # type: ignore[attr-defined]
    async with linked_rig(tmp_path, fake, policy="create_lead") as r:
        r.runtime.pm.register(plugin, "deeplink")
        await r.inbound(message("c1", "1"))
        await eventually(lambda: fake.chat_links)
        assert links(fake)[0]["contact_id"] == contact
        await r.inbound(message("c2", "1"))
        await eventually(lambda: r.amojo.messages_in("lb:c2"))
        assert len(fake.chat_links) == 1


async def cli(*args: str) -> Any:
    runner = CliRunner()
    return await anyio.to_thread.run_sync(lambda: runner.invoke(main, list(args)))


async def test_history_and_link_commands(tmp_path: Path) -> None:
    from rig import CHANNEL, SECRET

    from amoconnect.testing.fake_amojo import FakeAmojo

    amojo = FakeAmojo(CHANNEL, SECRET)
    amojo.connect(ACCOUNT)
    fake = FakeAmoCRM()
    contact = fake.add_contact("Ann")
    token = fake.add_long_lived_token()
    async with serve_app(amojo.app) as amojo_url, serve_app(fake.app) as rest_url:
        data = base_config(tmp_path, channel={"amojo_url": amojo_url})
        data["accounts"][0].update(rest_url=rest_url, token=token)
        config = tmp_path / "amoconnect.toml"
        config.write_text(tomli_w.dumps(data))
        history = ("history", "--config", str(config), "--account", "main")
        missing = await cli(*history, "--conversation", "nope")
        assert missing.exit_code == 1
        assert "no conversation 'nope' in account 'main' (for amoCRM's chat id, use --chat)" in missing.output
        assert "Traceback" not in missing.output
        no_chat = await cli(*history, "--chat", "nope")
        assert no_chat.exit_code == 1
        assert "amoCRM has no messages in amoCRM chat 'nope'" in no_chat.output
        for both_or_neither in ((), ("--chat", "x", "--conversation", "y")):
            usage = await cli(*history, *both_or_neither)
            assert usage.exit_code == 2
            assert "either --conversation (ours) or --chat (amoCRM's chat id)" in usage.output
        # A conversation the connector relayed: put it in the store and in amoCRM.
        from amoconnect.config import load_config
        from amoconnect.store import opened_store
        from amoconnect.store.base import ConversationRecord

        record = ConversationRecord(SCOPE, "lb:c1", "lb", "c1", client_id="lb:c1")
        async with opened_store(load_config(config).store) as store:
            await store.put_conversation(record)
        chat = amojo.add_chat(SCOPE, "lb:c1", client_id="lb:c1", name="Ann")
        unknown_chat = await cli(*history, "--conversation", "lb:c1")
        assert unknown_chat.exit_code == 1
        assert "amoCRM's chat id of conversation 'lb:c1' is not known yet" in unknown_chat.output
        async with opened_store(load_config(config).store) as store:
            await store.put_conversation(msgspec.structs.replace(record, amocrm_chat_id=chat.id))
        from amoconnect.amojo import wire
        from amoconnect.amojo.client import AmojoClient

        async with AmojoClient(CHANNEL, SECRET, base_url=amojo_url) as client:
            for i in range(55):
                await client.send_message(
                    SCOPE,
                    wire.MessagePayload(
                        timestamp=1_700_000_000 + i,
                        msec_timestamp=(1_700_000_000 + i) * 1000,
                        msgid=f"h{i}",
                        conversation_id="lb:c1",
                        sender=wire.Participant(id="lb:c1", name="Ann"),
                        message=wire.MessageContent(type="text", text=f"line {i}"),
                    ),
                )
        shown = await cli("history", "--config", str(config), "--account", "main", "--conversation", "lb:c1")
        assert shown.exit_code == 0, shown.output
        lines = shown.output.strip().splitlines()
        assert len(lines) == 55
        assert lines[0].endswith("line 54")
        as_json = await cli(*history, "--chat", chat.id, "--json")
        assert json.loads(as_json.output.splitlines()[-1])["message"]["text"] == "line 0"
        linked = await cli("link", "--config", str(config), "--conversation", "lb:c1", "--contact", str(contact))
        assert linked.exit_code == 0, linked.output
        assert (links(fake)[0]["contact_id"], links(fake)[0]["chat_id"]) == (contact, chat.id)
