"""amoCRM's chat id of a conversation: learnt from amojo's answers, and the only id a history lookup takes."""

from __future__ import annotations

from pathlib import Path

import pytest
from rig import SCOPE, Rig, eventually, lose_the_first_outcome, message, rig
from structlog.testing import capture_logs

from amoconnect.store.base import ConversationRecord
from amoconnect.testing.stores import counts_are

pytestmark = pytest.mark.anyio


@pytest.fixture
async def r(tmp_path: Path):  # type: ignore[no-untyped-def]
    async with rig(tmp_path) as connected:
        yield connected


def chat_of(r: Rig, conversation_id: str) -> str:
    chat = r.amojo.find_chat(conversation_id, scope_id=SCOPE)
    assert chat is not None
    return chat.id


async def settled(r: Rig) -> None:
    await eventually(lambda: counts_are(r.runtime.store, queued=0, running=0, dead=0))


async def test_the_first_message_s_answer_records_amocrm_s_chat_id(r: Rig) -> None:
    await r.inbound(message("c1", "1"))
    await settled(r)
    record = await r.runtime.store.conversation(SCOPE, "lb:c1")
    assert record is not None and record.amocrm_chat_id == chat_of(r, "lb:c1")


async def test_a_duplicate_looks_in_the_history_of_amocrm_s_chat_id(r: Rig) -> None:
    await r.inbound(message("c1", "1"))
    await settled(r)
    lose_the_first_outcome(r, "lb:c1:2")
    r.amojo.requests.clear()
    await r.inbound(message("c1", "2"))
    await settled(r)
    record = await r.runtime.store.message(SCOPE, "lb:c1:2")
    assert record is not None and record.amocrm_id == r.amojo.message_by_msgid("lb:c1:2", scope_id=SCOPE).id  # type: ignore[union-attr]
    history = [q for q in r.amojo.requests if q.path.endswith("/history")]
    assert [q.path.split("/")[-2] for q in history] == [chat_of(r, "lb:c1")]
    assert [q.status for q in history] == [200]
    assert not r.amojo.requests_to("/chats", "POST"), "the stored chat id is used, amojo is not asked for it"


async def test_a_duplicate_of_a_conversation_s_first_message_asks_amojo_for_the_chat_id(r: Rig) -> None:
    """The answer that carried the chat id was lost with the send's outcome: *create chat* with our
    conversation_id answers the existing chat, then the history is searched."""
    lose_the_first_outcome(r, "lb:c1:1")
    await r.inbound(message("c1", "1"))
    await settled(r)
    chat_id = chat_of(r, "lb:c1")
    record = await r.runtime.store.message(SCOPE, "lb:c1:1")
    assert record is not None and record.amocrm_id == r.amojo.messages_in(chat_id)[0].id
    conversation = await r.runtime.store.conversation(SCOPE, "lb:c1")
    assert conversation is not None and conversation.amocrm_chat_id == chat_id
    assert [q.status for q in r.amojo.requests_to("/chats", "POST")] == [200]
    assert len(r.amojo.chats) == 1, "the existing chat was answered, no second one made"
    assert [q.status for q in r.amojo.requests if q.path.endswith("/history")] == [200]


async def test_a_refused_chat_lookup_leaves_the_id_unknown_and_says_why(r: Rig) -> None:
    lose_the_first_outcome(r, "lb:c1:1")
    r.amojo.fail_next(400, path_contains="/chats", times=5)
    with capture_logs() as logs:
        await r.inbound(message("c1", "1"))
        await settled(r)
    record = await r.runtime.store.message(SCOPE, "lb:c1:1")
    assert record is not None and record.amocrm_id is None
    assert len(r.amojo.messages_in("lb:c1")) == 1
    assert not [q for q in r.amojo.requests if q.path.endswith("/history")]
    assert any("chat id of the conversation is not known and amojo refused to give it" in e["event"] for e in logs)


async def test_context_history_reads_amocrm_s_chat(r: Rig) -> None:
    history = r.adapter().context.history
    assert history is not None
    assert [m async for m in history("c1")] == []  # no such conversation
    await r.runtime.store.put_conversation(ConversationRecord(SCOPE, "lb:c1", "lb", "c1", client_id="lb:c1"))
    with capture_logs() as logs:
        assert [m async for m in history("c1")] == []
    assert any("chat id of the conversation is not known yet" in e["event"] for e in logs)
    assert not [q for q in r.amojo.requests if q.path.endswith("/history")], "no lookup by our conversation_id"
    await r.inbound(
        message("c1", "1", "hello", timestamp=1_700_000_000), message("c1", "2", "again", timestamp=1_700_000_001)
    )
    await settled(r)
    entries = [m async for m in history("c1")]
    assert [m.text for m in entries] == ["again", "hello"]
    assert all(m.from_client and m.kind == "text" and m.amocrm_id and m.msgid for m in entries)
    assert entries[0].at_ms == 1_700_000_001_000
    paths = [q.path for q in r.amojo.requests if q.path.endswith("/history")]
    assert paths and all(f"/chats/{chat_of(r, 'lb:c1')}/history" in p for p in paths)
