"""SQL both stores share: the queue's head rule, the mapping's columns and rows → records."""

from __future__ import annotations

from typing import Any

from .base import ConversationRecord, MessageRecord

__all__ = ["CONVERSATION_COLUMNS", "HEAD", "MESSAGE_COLUMNS", "conversation", "message"]

HEAD = "NOT EXISTS (SELECT 1 FROM queue p WHERE p.key = q.key AND (p.id < q.id OR p.state = 'running'))"
"""A queued job ``q`` may run: no earlier job of its key exists and none of its key is running
(a re-queued dead letter keeps its old id, so it can be earlier than a running job)."""
CONVERSATION_COLUMNS = (
    "scope_id, conversation_id, instance, chat, amocrm_chat_id, client_id, last_client_at, ref_pending"
)
MESSAGE_COLUMNS = "scope_id, msgid, conversation_id, direction, amocrm_id, messenger_id, status"


def conversation(row: tuple[Any, ...] | None) -> ConversationRecord | None:
    """A row of :data:`CONVERSATION_COLUMNS` as a record (SQLite keeps ``ref_pending`` as 0/1)."""
    if row is None:
        return None
    scope_id, conversation_id, instance, chat, amocrm_chat_id, client_id, last_client_at, ref_pending = row
    return ConversationRecord(
        scope_id, conversation_id, instance, chat, amocrm_chat_id, client_id, last_client_at, bool(ref_pending)
    )


def message(row: tuple[Any, ...] | None) -> MessageRecord | None:
    """A row of :data:`MESSAGE_COLUMNS` as a record."""
    return None if row is None else MessageRecord(*row)
