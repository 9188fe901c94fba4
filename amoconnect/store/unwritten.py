"""Mapping records a store has accepted but not committed yet, seen by its own lookups meanwhile.

:meth:`~amoconnect.store.base.Store.finish_soon` returns before its transaction commits, and the
relay then runs the conversation's next job at once: that job must read what the previous one
wrote (its conversation's amoCRM chat id and reply window, the message a client's edit or quote
refers to). Until the commit, the records wait here, in the order they were given, and every
lookup of the mapping applies them to what it read from the database the way the database will
(a conversation merged, a message replaced, a chat taken over). Only this process sees them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import msgspec

from .base import ConversationRecord, MessageRecord

__all__ = ["SOON_GROUP", "SOON_LINGER", "Unwritten", "merged"]

SOON_GROUP = 16
SOON_LINGER = 0.005
"""Finishes accepted without waiting (:meth:`~amoconnect.store.base.Store.finish_soon`) commit
together: up to ``SOON_GROUP`` of them, or what arrived ``SOON_LINGER`` seconds after the first
(a conversation's pipeline hands one over per amojo round trip), or (SQLite) with the next other
write but an enqueue."""


def merged(stored: ConversationRecord, record: ConversationRecord) -> ConversationRecord:
    """``record`` merged into ``stored`` as :meth:`Store.finish` merges it (``store/sql.py``'s ``_MERGED``)."""
    last = stored.last_client_at
    if record.last_client_at is not None and (last is None or record.last_client_at >= last):
        last = record.last_client_at
    return msgspec.structs.replace(
        record,
        amocrm_chat_id=record.amocrm_chat_id if record.amocrm_chat_id is not None else stored.amocrm_chat_id,
        client_id=record.client_id if record.client_id is not None else stored.client_id,
        last_client_at=last,
    )


@dataclass
class _Batch:
    conversations: Sequence[ConversationRecord]
    messages: Sequence[MessageRecord]


@dataclass
class Unwritten:
    """The records of the writes accepted and not committed yet, oldest first."""

    _batches: list[_Batch] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self._batches)

    def add(self, conversations: Sequence[ConversationRecord], messages: Sequence[MessageRecord]) -> object:
        """Hold these records until :meth:`drop` is called with the returned token (committed or failed)."""
        batch = _Batch(tuple(conversations), tuple(messages))
        if batch.conversations or batch.messages:
            self._batches.append(batch)
        return batch

    def drop(self, token: object) -> None:
        for i, batch in enumerate(self._batches):
            if batch is token:
                del self._batches[i]
                return

    def _conversations(self) -> list[ConversationRecord]:
        return [c for batch in self._batches for c in batch.conversations]

    def _messages(self) -> list[MessageRecord]:
        return [m for batch in self._batches for m in batch.messages]

    def conversation(
        self, stored: ConversationRecord | None, *, scope_id: str, conversation_id: str
    ) -> ConversationRecord | None:
        """The conversation of our id as it will be once the held records are committed."""
        found = stored
        for record in self._conversations():
            if (record.scope_id, record.conversation_id) == (scope_id, conversation_id):
                found = record if found is None else merged(found, record)
            elif found is not None and (record.instance, record.chat) == (found.instance, found.chat):
                found = None  # another conversation took the chat over: this one's row is deleted
        return found

    def conversation_ids(self, match: tuple[str, str], by: str) -> list[tuple[str, str]]:
        """Scope and our id of the held conversations whose ``by`` pair (``"chat"``: instance and chat;
        ``"amocrm"``: scope and amoCRM's chat id) is ``match``."""
        found = [(c.scope_id, c.conversation_id) for c in self._conversations() if _pair(c, by) == match]
        return list(dict.fromkeys(found))

    def message(self, stored: MessageRecord | None, match: tuple[str, ...], by: str) -> MessageRecord | None:
        """The message whose ``by`` fields (``"msgid"``: scope and msgid; ``"amocrm"``: scope and amoCRM's id;
        ``"messenger"``: scope, conversation and messenger id) are ``match``, once the held records are
        committed (a message record replaces the stored one of its msgid)."""
        for record in reversed(self._messages()):
            if _fields(record, by) == match:
                return record
        if stored is not None and any(
            (m.scope_id, m.msgid) == (stored.scope_id, stored.msgid) for m in self._messages()
        ):
            return None  # replaced by a record that no longer matches
        return stored


def _pair(record: ConversationRecord, by: str) -> tuple[str | None, ...]:
    """The pair of ``record`` a lookup ``by`` chat or by amoCRM's chat id matches."""
    return (record.instance, record.chat) if by == "chat" else (record.scope_id, record.amocrm_chat_id)


def _fields(record: MessageRecord, by: str) -> tuple[str | None, ...]:
    if by == "msgid":
        return (record.scope_id, record.msgid)
    if by == "amocrm":
        return (record.scope_id, record.amocrm_id)
    return (record.scope_id, record.conversation_id, record.messenger_id)
