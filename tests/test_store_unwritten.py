"""What a store's lookups apply to the database's answer: records not committed yet, those committed
while the read was under way, and a pipelined chat's known row (``amoconnect/store/unwritten.py``)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest

from amoconnect.store import unwritten as unwritten_module
from amoconnect.store.base import ConversationRecord, MessageRecord
from amoconnect.store.unwritten import Unwritten

CHAT = ("inst", "chat-a")
ROW = ConversationRecord("scope", "conv-a", "inst", "chat-a", "amo-1", "client-a", last_client_at=9.0)


def later(at: float, **changes: object) -> ConversationRecord:
    fields = {"amocrm_chat_id": None, "client_id": None, "last_client_at": at, **changes}
    return ConversationRecord("scope", "conv-a", "inst", "chat-a", **fields)  # type: ignore[arg-type]


def test_records_committed_while_a_read_was_under_way_are_applied_to_its_answer() -> None:
    unwritten = Unwritten()
    sent = MessageRecord("scope", "m1", "conv-a", "in", amocrm_id="amo-m1")
    token = unwritten.add([later(10.0)], [sent])
    with unwritten.reading() as read:
        unwritten.committed(token)  # the answer may predate the commit: it no longer waits here
        assert not unwritten
        found = unwritten.conversation(ROW, scope_id="scope", conversation_id="conv-a", since=read.since)
        assert found == ConversationRecord("scope", "conv-a", "inst", "chat-a", "amo-1", "client-a", 10.0)
        assert unwritten.message(None, ("scope", "m1"), "msgid", read.since) == sent
    with unwritten.reading() as read:
        assert read.since == []  # a read that began after the commit finds it in the database


def test_a_known_row_takes_in_commits_and_is_forgotten_when_it_may_differ() -> None:
    unwritten = Unwritten()
    assert unwritten.known(CHAT) is None
    with unwritten.reading() as read:
        unwritten.keep(CHAT, read, ROW)
    assert unwritten.known(CHAT) is None  # nothing of the chat waits: not a pipeline, not kept
    first = unwritten.add([later(10.0)], [])
    with unwritten.reading() as read:
        unwritten.committed(first)
        second = unwritten.add([later(11.0, amocrm_chat_id="amo-2")], [])
        unwritten.keep(CHAT, read, ROW)  # read before ``first`` committed: it is folded in
    assert unwritten.known(CHAT) == ConversationRecord("scope", "conv-a", "inst", "chat-a", "amo-1", "client-a", 10.0)
    third = unwritten.add([later(12.0)], [])
    unwritten.committed(second)
    assert unwritten.known(CHAT) == ConversationRecord("scope", "conv-a", "inst", "chat-a", "amo-2", "client-a", 11.0)
    unwritten.drop(third)  # its outcome unknown: the row may hold it or not
    fourth = unwritten.add([later(13.0)], [])
    assert unwritten.known(CHAT) is None
    with unwritten.reading() as read:
        unwritten.keep(CHAT, read, ROW)
    taken = unwritten.add([ConversationRecord("scope", "conv-b", "inst", "chat-a", "amo-3")], [])
    unwritten.committed(fourth)
    assert unwritten.known(CHAT) is not None
    unwritten.committed(taken)  # another conversation took the chat over
    assert unwritten.known(CHAT) is None
    with unwritten.reading() as read:
        unwritten.add([later(14.0)], [])
        unwritten.forget()  # while the read was under way: what it found is not kept
        unwritten.keep(CHAT, read, ROW)
    assert unwritten.known(CHAT) is None


def test_a_read_keeps_its_row_unless_its_own_chat_or_conversation_was_forgotten_meanwhile() -> None:
    """A busy store forgets the rows of the conversations it finished a moment ago, many times during any
    read: only what a forget could have changed of the read's row keeps it from being known."""
    unwritten = Unwritten()
    unwritten.add([later(10.0)], [])
    other = ConversationRecord("scope", "conv-b", "inst", "chat-b")
    with unwritten.reading() as read:
        unwritten.forget([other])
        unwritten.keep(CHAT, read, ROW)
    assert unwritten.known(CHAT) == ROW
    for forgotten in (
        ConversationRecord("scope", "conv-b", "inst", "chat-a"),  # another conversation took the chat over
        ConversationRecord("scope", "conv-a", "inst", "chat-c"),  # the conversation moved to another chat
    ):
        unwritten.forget()
        with unwritten.reading() as read:
            unwritten.forget([forgotten])
            unwritten.keep(CHAT, read, ROW)
        assert unwritten.known(CHAT) is None, forgotten


def test_a_row_read_with_a_claimed_job_answers_its_lookup_then_serves_as_a_known_row() -> None:
    """No record of the chat need wait for the job's own lookup (a lone job): the row was read as the job
    was claimed. After it, the row stands while records of the chat wait (the run goes on), as a known
    row; a write of the conversation meanwhile reads the database."""
    unwritten = Unwritten()
    with unwritten.reading() as read:
        unwritten.claimed(CHAT, read, ROW)
    assert unwritten.known(CHAT) == ROW
    assert unwritten.known(CHAT) is None  # nothing of the chat waits: read it
    with unwritten.reading() as read:
        unwritten.claimed(CHAT, read, ROW)
    assert unwritten.known(CHAT) == ROW
    unwritten.add([later(10.0)], [])  # the job's finish, not committed yet: the run goes on
    assert unwritten.known(CHAT) == ROW
    with unwritten.reading() as read:
        unwritten.claimed(CHAT, read, ROW)
    unwritten.forget([ROW])
    assert unwritten.known(CHAT) is None


def test_known_rows_of_chats_no_longer_looked_up_go_once_they_are_old(monkeypatch: pytest.MonkeyPatch) -> None:
    from amoconnect.store import unwritten as module

    unwritten = Unwritten()
    unwritten.add([later(10.0)], [])
    with unwritten.reading() as read:
        unwritten.keep(CHAT, read, ROW)
    other = ConversationRecord("scope", "conv-b", "inst", "chat-b")
    unwritten.add([other], [])
    monkeypatch.setattr(module, "FRESH", -1.0)
    with unwritten.reading() as read:
        unwritten.keep(("inst", "chat-b"), read, other)
    assert list(unwritten._known) == [("inst", "chat-b")]


def test_the_held_records_a_lookup_applies_follow_every_add_commit_and_drop() -> None:
    """Lookups read the held records many times between two changes of them (kept flattened): each add,
    commit and drop is seen by the next lookup, and a chat counts as waiting only while records of it
    are held (counted per chat, forgotten once none is)."""
    unwritten = Unwritten()
    first = unwritten.add([later(10.0)], [])
    found = unwritten.conversation(ROW, scope_id="scope", conversation_id="conv-a")
    assert found is not None and found.last_client_at == 10.0
    sent = MessageRecord("scope", "m1", "conv-a", "in", amocrm_id="amo-m1")
    second = unwritten.add([later(11.0)], [sent])
    found = unwritten.conversation(ROW, scope_id="scope", conversation_id="conv-a")
    assert found is not None and found.last_client_at == 11.0
    assert unwritten.message(None, ("scope", "m1"), "msgid") == sent
    with unwritten.reading() as read:
        unwritten.keep(CHAT, read, ROW)
    assert unwritten.known(CHAT) == ROW
    unwritten.committed(first)
    assert unwritten.known(CHAT) is not None  # the second one's record of the chat still waits
    unwritten.drop(second)
    assert unwritten.known(CHAT) is None
    assert unwritten.conversation(ROW, scope_id="scope", conversation_id="conv-a") == ROW
    assert unwritten.message(None, ("scope", "m1"), "msgid") is None
    tokens = [unwritten.add([ConversationRecord("scope", f"c{i}", "inst", f"chat-{i}")], []) for i in range(100)]
    for token in tokens:
        unwritten.committed(token)
    assert not unwritten and not unwritten._held_by


class _Scanning(Unwritten):
    """What :class:`Unwritten` indexes, found by scanning every held record and known row at each call."""

    def conversation_ids(self, match: tuple[str, str], by: str, since: Sequence[Any] = ()) -> list[tuple[str, str]]:
        found = (c for c in self._conversations(since) if unwritten_module._pair(c, by) == match)
        return list(dict.fromkeys((c.scope_id, c.conversation_id) for c in found))

    def _touched(self, record: ConversationRecord) -> list[tuple[str, str]]:
        chat = (record.instance, record.chat)
        same = unwritten_module._same
        return [known for known, row in self._known.items() if known == chat or same(row.record, record)]

    def _waiting(self, chat: tuple[str, str]) -> bool:
        return any((c.instance, c.chat) == chat for c in self._held()[0])


@pytest.mark.parametrize("seed", range(40))
def test_the_indexes_answer_as_a_scan_of_every_record_would(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Random adds, commits, drops, forgets and reads with known rows kept, over a few chats that
    conversations take over from one another: every lookup answers as the scans would."""
    rng = random.Random(seed)
    clock = [0.0]
    monkeypatch.setattr(unwritten_module, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    chats = [("inst", f"chat-{n}") for n in range(3)]
    ids = [("scope", f"conv-{n}") for n in range(3)]

    def record() -> ConversationRecord:
        scope, conversation = rng.choice(ids)
        amocrm = rng.choice([None, "amo-1", "amo-2"])
        return ConversationRecord(scope, conversation, *rng.choice(chats), amocrm, last_client_at=clock[0])

    stores = (Unwritten(), _Scanning())
    tokens: list[tuple[object, object]] = []

    def step() -> None:
        clock[0] += rng.choice([0.0, 0.01, 0.3])
        action = rng.random()
        if action < 0.4 or not tokens:
            records = [record() for _ in range(rng.randint(0, 2))]
            tokens.append((stores[0].add(records, []), stores[1].add(records, [])))
        elif action < 0.7:
            pair = tokens.pop(rng.randrange(len(tokens)))
            for store, token in zip(stores, pair, strict=True):
                store.committed(token)
        elif action < 0.85:
            pair = tokens.pop(rng.randrange(len(tokens)))
            for store, token in zip(stores, pair, strict=True):
                store.drop(token)
        else:
            forgotten = None if rng.random() < 0.2 else [record()]
            for store in stores:
                store.forget(forgotten)

    for _ in range(60):
        chat = rng.choice(chats)
        found = record()
        with stores[0].reading() as first, stores[1].reading() as second:
            for _ in range(rng.randint(0, 3)):
                step()
            row = msgspec.structs.replace(found, instance=chat[0], chat=chat[1])
            claimed = rng.random() < 0.3  # read with a job of the chat as it was claimed
            for store, read in zip(stores, (first, second), strict=True):
                (store.claimed if claimed else store.keep)(chat, read, row)
        step()
        for chat in chats:
            assert stores[0].known(chat) == stores[1].known(chat)
            assert set(stores[0].conversation_ids(chat, "chat")) == set(stores[1].conversation_ids(chat, "chat"))
        for amocrm in ("amo-1", "amo-2"):
            match = ("scope", amocrm)
            assert set(stores[0].conversation_ids(match, "amocrm")) == set(stores[1].conversation_ids(match, "amocrm"))
        for scope, conversation in ids:
            assert stores[0].conversation(None, scope_id=scope, conversation_id=conversation) == stores[1].conversation(
                None, scope_id=scope, conversation_id=conversation
            )
