"""SQL both stores share: the queue's head rule, the mapping's columns and lookups, rows → records."""

from __future__ import annotations

from typing import Any, ClassVar

from .base import ConversationRecord, MessageRecord

__all__ = ["CONVERSATION_COLUMNS", "HEAD", "MESSAGE_COLUMNS", "MappingLookups", "conversation", "message"]

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


class MappingLookups:
    """The mapping's and the adapters' state lookups, for a store that runs a one-row query with
    ``_one(sql, params)`` in its engine's ``placeholder`` style."""

    placeholder: ClassVar[str]

    async def _one(self, sql: str, params: tuple[Any, ...]) -> tuple[Any, ...] | None:
        raise NotImplementedError

    async def _row(self, columns: str, table: str, where: tuple[str, ...], params: tuple[Any, ...]) -> Any:
        conditions = " AND ".join(f"{column} = {self.placeholder}" for column in where)
        return await self._one(f"SELECT {columns} FROM {table} WHERE {conditions} LIMIT 1", params)

    async def conversation(self, scope_id: str, conversation_id: str) -> ConversationRecord | None:
        """A conversation by our id."""
        where = ("scope_id", "conversation_id")
        return conversation(await self._row(CONVERSATION_COLUMNS, "conversations", where, (scope_id, conversation_id)))

    async def conversation_by_chat(self, instance: str, chat: str) -> ConversationRecord | None:
        """A conversation by the messenger's chat id."""
        return conversation(
            await self._row(CONVERSATION_COLUMNS, "conversations", ("instance", "chat"), (instance, chat))
        )

    async def conversation_by_amocrm(self, scope_id: str, amocrm_chat_id: str) -> ConversationRecord | None:
        """A conversation by amoCRM's chat id."""
        where = ("scope_id", "amocrm_chat_id")
        return conversation(await self._row(CONVERSATION_COLUMNS, "conversations", where, (scope_id, amocrm_chat_id)))

    async def message(self, scope_id: str, msgid: str) -> MessageRecord | None:
        """A message by our msgid."""
        return message(await self._row(MESSAGE_COLUMNS, "messages", ("scope_id", "msgid"), (scope_id, msgid)))

    async def message_by_amocrm(self, scope_id: str, amocrm_id: str) -> MessageRecord | None:
        """A message by amoCRM's message id."""
        return message(await self._row(MESSAGE_COLUMNS, "messages", ("scope_id", "amocrm_id"), (scope_id, amocrm_id)))

    async def message_by_messenger(
        self, scope_id: str, conversation_id: str, messenger_id: str
    ) -> MessageRecord | None:
        """A message by the messenger's message id within one conversation."""
        where = ("scope_id", "conversation_id", "messenger_id")
        return message(await self._row(MESSAGE_COLUMNS, "messages", where, (scope_id, conversation_id, messenger_id)))

    async def get_state(self, namespace: str, key: str) -> bytes | None:
        """A value an adapter stored."""
        row = await self._row("value", "state", ("namespace", "key"), (namespace, key))
        return None if row is None else bytes(row[0])
