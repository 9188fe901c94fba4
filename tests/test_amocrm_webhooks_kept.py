"""A signed amoCRM webhook is never lost to a type surprise: repaired where a field decides nothing,
else kept as a dead letter with the reason, visible and retryable after an upgrade."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from pathlib import Path
from typing import Any

import anyio
import pytest
import tomli_w
from click.testing import CliRunner
from rig import ACCOUNT, SCOPE, SECRET, Rig, base_config, eventually, message, rig

from amoconnect.amojo import hooks, wire
from amoconnect.cli import main
from amoconnect.errors import WebhookError
from amoconnect.model import OutgoingMessage
from amoconnect.testing.stores import counts_are

pytestmark = pytest.mark.anyio


@pytest.fixture
async def r(tmp_path: Path):  # type: ignore[no-untyped-def]
    async with rig(tmp_path) as connected:
        yield connected


async def conversation(r: Rig) -> tuple[str, str]:
    """A conversation the client started: amoCRM's chat id and the client's amoCRM user id."""
    await r.inbound(message("c1", "1"))
    await eventually(lambda: counts_are(r.runtime.store, queued=0, running=0))
    chat = r.amojo.find_chat("lb:c1", scope_id=SCOPE)
    assert chat is not None
    return chat.id, chat.client_user_id


def manager_message(chat_id: str, client_user_id: str, **fields: Any) -> dict[str, Any]:
    """A manager's text message hook as amoCRM sends it; ``fields`` go into ``message.message``."""
    now = time.time()
    return {
        "account_id": ACCOUNT,
        "time": int(now),
        "message": {
            "conversation": {"id": chat_id, "client_id": "lb:c1"},
            "sender": {"id": str(uuid.uuid4()), "name": "Manager"},
            "receiver": {"id": client_user_id, "client_id": "lb:c1"},
            "timestamp": int(now),
            "msec_timestamp": int(now * 1000),
            "message": {"id": str(uuid.uuid4()), "type": "text", "text": "answer", **fields},
        },
    }


async def post(r: Rig, hook: dict[str, Any] | bytes) -> dict[str, Any]:
    body = hook if isinstance(hook, bytes) else json.dumps(hook).encode()
    signature = hmac.new(SECRET.encode(), body, hashlib.sha1).hexdigest()
    response = await r.client.post(f"/amocrm/{SCOPE}", content=body, headers={"X-Signature": signature})
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


# -- lenient decoding ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "outer", "check"),
    [
        ({"file_size": "12"}, {}, lambda h: h.message.message.file_size == 12),
        ({"file_size": "12 KB"}, {}, lambda h: h.message.message.file_size is None),
        ({"media_duration": [3]}, {}, lambda h: h.message.message.media_duration is None),
        ({"thumbnail": {"url": "x"}}, {}, lambda h: h.message.message.thumbnail is None),
        ({"tag": 7}, {}, lambda h: h.message.message.tag == "7"),
        ({"text": 42}, {}, lambda h: h.message.message.text == "42"),
        ({}, {"msec_timestamp": 1639572260980.5}, lambda h: h.message.msec_timestamp == 1639572260980),
        ({}, {"msec_timestamp": "soon"}, lambda h: h.message.msec_timestamp is None),
        ({}, {"timestamp": 1639572260.9}, lambda h: h.message.timestamp == 1639572260),
        ({}, {"timestamp": "1639572260"}, lambda h: h.message.timestamp == 1639572260),
        ({}, {"sender": {"id": "m", "name": ["Ann"]}}, lambda h: h.message.sender.name is None),
        ({}, {"receiver": {"id": "c", "client_id": "lb:c1", "avatar": 5}}, lambda h: h.message.receiver.avatar == "5"),
        ({"id": 12345}, {}, lambda h: h.message.message.id == "12345"),
    ],
)
def test_a_type_surprise_where_a_field_decides_nothing_is_repaired(
    fields: dict[str, Any], outer: dict[str, Any], check: Any
) -> None:
    hook = manager_message("chat", "user", **fields)
    hook["message"].update(outer)
    parsed = wire.parse_webhook(json.dumps(hook).encode())
    assert isinstance(parsed, wire.MessageHook)
    assert check(parsed)


@pytest.mark.parametrize(
    ("fields", "outer", "path"),
    [
        ({"text": ["a"]}, {}, "$.message.message.text"),
        ({"markup": {"buttons": "yes"}}, {}, "$.message.message.markup.buttons"),
        ({}, {"conversation": {"id": {"x": 1}}}, "$.message.conversation.id"),
        ({}, {"sender": {"id": None}}, "$.message.sender.id"),
        ({}, {"source": "lb"}, "$.message.source"),
    ],
)
def test_a_type_surprise_where_a_field_decides_something_is_not_understood(
    fields: dict[str, Any], outer: dict[str, Any], path: str
) -> None:
    hook = manager_message("chat", "user", **fields)
    hook["message"].update(outer)
    with pytest.raises(WebhookError, match=path.replace("$", r"\$")):
        wire.parse_webhook(json.dumps(hook).encode())


def test_repairs_are_bounded() -> None:
    hook = manager_message("chat", "user", markup={"buttons": [[{"text": n} for n in range(hooks.MAX_REPAIRS + 1)]]})
    with pytest.raises(WebhookError, match=f"more than {hooks.MAX_REPAIRS}"):
        wire.parse_webhook(json.dumps(hook).encode())


# -- the route and the worker -------------------------------------------------------------------


async def test_a_repaired_manager_message_reaches_the_client(r: Rig) -> None:
    chat_id, user = await conversation(r)
    hook = manager_message(chat_id, user, file_size="12 KB", tag=3)
    hook["message"]["msec_timestamp"] = hook["message"]["msec_timestamp"] + 0.5
    assert await post(r, hook) == {"ok": True}
    (sent,) = await eventually(lambda: r.adapter().sent)
    assert isinstance(sent, OutgoingMessage) and sent.text == "answer"


async def test_a_webhook_not_understood_is_answered_200_and_kept_as_a_dead_letter(r: Rig) -> None:
    chat_id, user = await conversation(r)
    body = json.dumps(manager_message(chat_id, user, text={"rich": "answer"})).encode()
    answer = await post(r, body)
    assert "$.message.message.text" in answer["dead_letter"]
    (dead,) = await eventually(lambda: r.runtime.store.dead_letters())
    assert dead.payload == body, "the raw body is kept byte for byte"
    assert dead.kind == "amocrm" and dead.scope_id == SCOPE
    assert "amoCRM webhook not understood" in dead.error and "$.message.message.text" in dead.error
    assert (await post(r, body)).get("duplicate"), "the same body twice is one dead letter"
    assert r.adapter().sent == []
    assert not [m for m in r.amojo.messages if m.statuses], "no status invented for a message not understood"


async def test_a_webhook_of_another_account_is_kept_as_a_dead_letter(r: Rig) -> None:
    chat_id, user = await conversation(r)
    hook = manager_message(chat_id, user)
    hook["account_id"] = "another-account"
    answer = await post(r, hook)
    assert "hook for account 'another-account' sent to scope" in answer["dead_letter"]
    (dead,) = await eventually(lambda: r.runtime.store.dead_letters())
    assert "hook for account 'another-account'" in dead.error
    assert r.adapter().sent == []
    assert not r.amojo.requests_to("/delivery_status"), "no failure reported into the other account's chat"


@pytest.mark.parametrize(
    "body",
    [b"[]", b'"text"', b"42", b"null", b'{"account_id": "x"}', b'{"message": {}}', b'{"account_id":1,"time":"now"}'],
)
async def test_any_signed_json_is_kept(r: Rig, body: bytes) -> None:
    answer = await post(r, body)
    assert answer["dead_letter"]
    (dead,) = await eventually(lambda: r.runtime.store.dead_letters())
    assert dead.payload == body


async def test_a_dead_letter_is_listed_and_goes_through_when_retried_after_an_upgrade(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "amoconnect.toml"
    config.write_text(tomli_w.dumps(base_config(tmp_path)))
    async with rig(tmp_path) as r:
        chat_id, user = await conversation(r)
        await post(r, manager_message(chat_id, user, text={"rich": "answer"}))
        (dead,) = await eventually(lambda: r.runtime.store.dead_letters())
        runner = CliRunner()
        listed = await anyio.to_thread.run_sync(lambda: runner.invoke(main, ["jobs", "list", "--config", str(config)]))
        assert listed.exit_code == 0, listed.output
        assert f"#{dead.id} amocrm" in listed.output and "amoCRM webhook not understood" in listed.output

        # The upgrade: a version that reads rich text.
        original = wire.convert_leniently

        def reads_rich_text(obj: Any, type_: Any) -> Any:
            text = obj["message"]["message"].get("text")
            if isinstance(text, dict):
                obj["message"]["message"]["text"] = text["rich"]
            return original(obj, type_)

        monkeypatch.setattr(wire, "convert_leniently", reads_rich_text)
        assert await r.runtime.store.requeue([dead.id]) == 1  # what amoconnect jobs retry does
        (sent,) = await eventually(lambda: r.adapter().sent)
        assert isinstance(sent, OutgoingMessage) and sent.text == "answer"
        assert await r.runtime.store.dead_letters() == []


async def test_a_hook_with_a_trailing_newline_outside_its_signature_is_accepted(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        await conversation(r)
        r.amojo.trailing_newline = "unsigned"
        result = await r.amojo.emit_text(SCOPE, "lb:c1", "answer")
        assert result.status == 200
        (sent,) = await eventually(lambda: r.adapter().sent)
        assert isinstance(sent, OutgoingMessage) and sent.text == "answer"
