"""SQL both stores share: the queue's head records, the mapping's columns, lookups and writes, rows → records.

The queue's order rule: a queued job may run when no earlier job of its key (conversation) is
left and none of its key is running (a re-queued dead letter keeps its old id, so it can be
earlier than a running job). Rather than checking that against every job of the key on each
claim, which grows with the backlog, each key with jobs has one row in ``heads``: its earliest
job, that job's ``next_run``, and whether a job of the key runs (``busy``). Triggers on
``queue`` keep it in the same transaction as every write to the queue, whoever writes it; a
claim takes the earliest due rows of ``heads`` that are not busy, through a partial index, so
its cost depends on the number of jobs it takes, not on the number queued.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, NamedTuple

import msgspec

from .base import PREVIEW_CHARS, Activity, ConversationRecord, MessageRecord, RecentConversation, SourceActivity
from .unwritten import Read, Unwritten, merged

__all__ = [
    "ACTIVITY_SCHEMA",
    "AHEAD_OF_KEY",
    "CLAIMABLE",
    "CONVERSATION_COLUMNS",
    "HEADS_TABLE",
    "HEAD_CLAIMED",
    "MESSAGE_COLUMNS",
    "NEXT_DUE",
    "NEXT_OF_KEY",
    "PG_NOW",
    "Finish",
    "Grouped",
    "MappingLookups",
    "activity_params",
    "activity_reads",
    "activity_row",
    "activity_write",
    "conversation",
    "conversation_merged_in_place",
    "conversation_params",
    "conversation_writes",
    "grouped",
    "grouped_activity_params",
    "grouped_activity_write",
    "head_added",
    "head_claimed",
    "head_refreshed",
    "message",
    "message_params",
    "recent_row",
]

PG_NOW = "extract(epoch from clock_timestamp())::float8"
"""PostgreSQL's clock in Unix seconds: a PostgreSQL store's times are the database's, so the clocks
of the processes sharing it need not agree."""
HEADS_TABLE = """
CREATE TABLE heads (
    key TEXT PRIMARY KEY,
    id {id_type} NOT NULL,
    next_run {time_type} NOT NULL,
    busy BOOLEAN NOT NULL
);
CREATE INDEX heads_due ON heads (next_run, id) WHERE NOT busy;
CREATE INDEX queue_running ON queue (key) WHERE state = 'running';
INSERT INTO heads (key, id, next_run, busy)
    SELECT key, id, next_run, EXISTS (SELECT 1 FROM queue r WHERE r.key = q.key AND r.state = 'running')
    FROM queue q WHERE id = (SELECT MIN(id) FROM queue p WHERE p.key = q.key);
"""
"""The head records, their indexes and the rows of the jobs already queued (the engine's id and time types)."""
CLAIMABLE = "SELECT id FROM heads WHERE NOT busy AND next_run <= {now} ORDER BY next_run, id LIMIT {limit}"
"""The ids of up to ``limit`` jobs a claim may take, earliest due first."""
NEXT_OF_KEY = "SELECT id FROM heads WHERE key = {key} AND NOT busy AND next_run <= {now}"
"""The id of the job of ``key`` a claim may take now, if any."""
NEXT_DUE = "SELECT MIN(next_run) FROM heads WHERE NOT busy"
AHEAD_OF_KEY = (
    "WITH next AS (SELECT id, state = 'queued' AND kind = {kind} AND next_run <= {now} AS ok FROM queue "
    "WHERE key = {key} AND id > {id} ORDER BY id LIMIT {limit}) "
    "SELECT id FROM next WHERE ok AND NOT EXISTS (SELECT 1 FROM next b WHERE NOT b.ok AND b.id < next.id) "
    "AND NOT EXISTS (SELECT 1 FROM queue WHERE key = {key} AND id < {id} AND state = 'queued' "
    "AND id >= (SELECT id FROM heads WHERE key = {key}))"
)
"""The ids of the jobs of ``key`` a holder of its job ``id`` may take ahead: of the ``limit`` jobs after
it, those before the first that is running, of another kind or not due, unless a queued job of the key
comes before ``id`` (a re-queued dead letter: it runs first; looked for from the key's head on, past
the index entries of the jobs finished before it). Parameters in order: kind, now, key, id, limit, key,
id, key."""
"""When the earliest job a claim may take is due (NULL: none)."""


def head_added(key: str, job_id: str, next_run: str) -> str:
    """The statement that follows a job's insertion: it heads its key unless an earlier job does.

    It reads nothing but the head row, so concurrent enqueues of one key meet only at that row
    (PostgreSQL: its lock), and the earliest id wins whichever commits first. An inserted job is
    queued, so it changes nobody's ``busy``.
    """
    return (
        f"INSERT INTO heads (key, id, next_run, busy) VALUES ({key}, {job_id}, {next_run}, FALSE) "
        "ON CONFLICT (key) DO UPDATE SET id = EXCLUDED.id, next_run = EXCLUDED.next_run WHERE EXCLUDED.id < heads.id"
    )


HEAD_CLAIMED = "OLD.state = 'queued' AND NEW.state = 'running' AND OLD.key = NEW.key AND OLD.next_run = NEW.next_run"
"""A trigger's test that an update claimed a job (and changed nothing else that a head record holds)."""


def head_claimed(key: str) -> str:
    """The statement that follows a claim: the key has a running job now. Its earliest job is
    the same (a claim changes no id), so the record needs no reading of the key's jobs."""
    return f"UPDATE heads SET busy = TRUE WHERE key = {key}"


def head_refreshed(key: str) -> tuple[str, str]:
    """The statements that follow a job's update or deletion: the key's head record made again from
    its jobs (two index lookups, whatever the backlog), or dropped when none is left."""
    drop = f"DELETE FROM heads WHERE key = {key} AND NOT EXISTS (SELECT 1 FROM queue WHERE key = {key})"
    make = (
        "INSERT INTO heads (key, id, next_run, busy) SELECT key, id, next_run, "
        f"EXISTS (SELECT 1 FROM queue r WHERE r.key = {key} AND r.state = 'running') "
        f"FROM queue WHERE key = {key} ORDER BY id LIMIT 1 "
        "ON CONFLICT (key) DO UPDATE SET id = EXCLUDED.id, next_run = EXCLUDED.next_run, busy = EXCLUDED.busy"
    )
    return drop, make


CONVERSATION_COLUMNS = (
    "scope_id, conversation_id, instance, chat, amocrm_chat_id, client_id, last_client_at, ref_pending"
)
MESSAGE_COLUMNS = "scope_id, msgid, conversation_id, direction, amocrm_id, messenger_id, status"
_MERGED = {
    "amocrm_chat_id": "COALESCE(EXCLUDED.amocrm_chat_id, conversations.amocrm_chat_id)",
    "client_id": "COALESCE(EXCLUDED.client_id, conversations.client_id)",
    # The later of the two, or the one that is not NULL (SQLite's max() of a NULL is NULL).
    "last_client_at": "CASE WHEN EXCLUDED.last_client_at IS NULL OR conversations.last_client_at > "
    "EXCLUDED.last_client_at THEN conversations.last_client_at ELSE EXCLUDED.last_client_at END",
}


def conversation_writes(placeholder: str) -> tuple[str, str, str]:
    """The statements that write a conversation record, in an engine's ``placeholder`` style
    (their parameters: :func:`conversation_params`): take over, then replace or merge.

    *Take over* deletes another conversation holding the record's (instance, chat): the record
    takes the chat over. *Replace* inserts the record or overwrites the row of its id. *Merge*
    inserts it or updates the row keeping what a stale record must not undo: the later
    ``last_client_at`` (the reply window never moves back), a known ``amocrm_chat_id`` and ``client_id``.
    """
    p = placeholder
    take_over = (
        f"DELETE FROM conversations WHERE instance = {p} AND chat = {p} AND (scope_id, conversation_id) <> ({p}, {p})"
    )
    columns = CONVERSATION_COLUMNS.split(", ")
    insert = (
        f"INSERT INTO conversations ({CONVERSATION_COLUMNS}) VALUES ({', '.join([p] * len(columns))}) "
        "ON CONFLICT (scope_id, conversation_id) DO UPDATE SET "
    )
    replaced = {c: f"EXCLUDED.{c}" for c in columns[2:]}
    replace = insert + ", ".join(f"{c} = {value}" for c, value in replaced.items())
    merge = insert + ", ".join(f"{c} = {value}" for c, value in (replaced | _MERGED).items())
    return take_over, replace, merge


def conversation_merged_in_place() -> str:
    """SQLite's update that merges a record into its stored row in place when that leaves the row's
    indexed columns as they are (its parameters: :func:`conversation_params`' row, as ``?1``..``?8``);
    it changes no row when they would change or there is no row: then take over and merge.

    :func:`conversation_writes`' merge sets every column, and SQLite rewrites an index entry whenever
    the ``SET`` names one of its columns, changed or not: a conversation's chat and amoCRM index
    pages, written again at every message. This update names only the columns no index holds.
    PostgreSQL needs none of it: an update that changes no indexed value leaves its indexes alone."""
    columns = CONVERSATION_COLUMNS.split(", ")
    number = {c: f"?{i}" for i, c in enumerate(columns, start=1)}

    def bound(sql: str) -> str:
        for column in columns:
            sql = sql.replace(f"EXCLUDED.{column}", number[column]).replace(f"conversations.{column}", column)
        return sql

    kept = ("scope_id", "conversation_id", "instance", "chat")
    assigned = {c: _MERGED.get(c, f"EXCLUDED.{c}") for c in columns if c not in (*kept, "amocrm_chat_id")}
    return (
        "UPDATE conversations SET "
        + ", ".join(f"{c} = {bound(value)}" for c, value in assigned.items())
        + " WHERE "
        + " AND ".join(f"{c} = {number[c]}" for c in kept)
        + f" AND amocrm_chat_id IS {bound(_MERGED['amocrm_chat_id'])}"
    )


def conversation_params(r: ConversationRecord) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """The parameters of :func:`conversation_writes`' take over and of its replace or merge, for ``r``."""
    return (r.instance, r.chat, r.scope_id, r.conversation_id), msgspec.structs.astuple(r)


def message_params(r: MessageRecord) -> tuple[Any, ...]:
    """``r`` as a row of :data:`MESSAGE_COLUMNS`."""
    return msgspec.structs.astuple(r)


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
    ``_one(sql, params)`` in its engine's ``placeholder`` style. The records the store accepted and
    has not committed yet (``unwritten``: :meth:`~amoconnect.store.base.Store.finish_soon`) are
    applied to what the database answers; a lookup by chat in a pipelined backlog may be answered
    from the chat's known row without a read (:mod:`.unwritten`)."""

    placeholder: ClassVar[str]
    unwritten: Unwritten

    async def _one(self, sql: str, params: tuple[Any, ...]) -> tuple[Any, ...] | None:
        raise NotImplementedError

    async def _row(self, columns: str, table: str, where: tuple[str, ...], params: tuple[Any, ...]) -> Any:
        conditions = " AND ".join(f"{column} = {self.placeholder}" for column in where)
        return await self._one(f"SELECT {columns} FROM {table} WHERE {conditions} LIMIT 1", params)

    async def _stored_conversation(self, scope_id: str, conversation_id: str) -> ConversationRecord | None:
        where = ("scope_id", "conversation_id")
        return conversation(await self._row(CONVERSATION_COLUMNS, "conversations", where, (scope_id, conversation_id)))

    async def conversation(self, scope_id: str, conversation_id: str) -> ConversationRecord | None:
        """A conversation by our id."""
        with self.unwritten.reading() as read:
            stored = await self._stored_conversation(scope_id, conversation_id)
            if not (self.unwritten or read.since):
                return stored
            return self.unwritten.conversation(
                stored, scope_id=scope_id, conversation_id=conversation_id, since=read.since
            )

    async def _conversation_where(
        self, stored: ConversationRecord | None, match: tuple[str, str], by: str, read: Read
    ) -> ConversationRecord | None:
        """``stored`` (found by ``by``: ``"chat"`` or ``"amocrm"``) with the records not committed yet
        (and those committed during ``read``) applied."""
        if not (self.unwritten or read.since):
            return stored
        ids = self.unwritten.conversation_ids(match, by, read.since)
        if stored is not None:
            ids.insert(0, (stored.scope_id, stored.conversation_id))
        for scope_id, conversation_id in dict.fromkeys(ids):
            base = stored
            if base is None or (scope_id, conversation_id) != (base.scope_id, base.conversation_id):
                base = await self._stored_conversation(scope_id, conversation_id)
            found = self.unwritten.conversation(
                base, scope_id=scope_id, conversation_id=conversation_id, since=read.since
            )
            if (
                found is not None
                and ((found.instance, found.chat) if by == "chat" else (found.scope_id, found.amocrm_chat_id)) == match
            ):
                return found
        return None

    async def conversation_by_chat(self, instance: str, chat: str) -> ConversationRecord | None:
        """A conversation by the messenger's chat id."""
        match = (instance, chat)
        with self.unwritten.reading() as read:
            stored = self.unwritten.known(match)
            if stored is None:
                where = ("instance", "chat")
                stored = conversation(await self._row(CONVERSATION_COLUMNS, "conversations", where, match))
                self.unwritten.keep(match, read, stored)
            return await self._conversation_where(stored, match, "chat", read)

    async def conversation_by_amocrm(self, scope_id: str, amocrm_chat_id: str) -> ConversationRecord | None:
        """A conversation by amoCRM's chat id."""
        where = ("scope_id", "amocrm_chat_id")
        with self.unwritten.reading() as read:
            stored = conversation(
                await self._row(CONVERSATION_COLUMNS, "conversations", where, (scope_id, amocrm_chat_id))
            )
            return await self._conversation_where(stored, (scope_id, amocrm_chat_id), "amocrm", read)

    async def _message(self, where: tuple[str, ...], params: tuple[str, ...], by: str) -> MessageRecord | None:
        with self.unwritten.reading() as read:
            stored = message(await self._row(MESSAGE_COLUMNS, "messages", where, params))
            return self.unwritten.message(stored, params, by, read.since) if self.unwritten or read.since else stored

    async def message(self, scope_id: str, msgid: str) -> MessageRecord | None:
        """A message by our msgid."""
        return await self._message(("scope_id", "msgid"), (scope_id, msgid), "msgid")

    async def message_by_amocrm(self, scope_id: str, amocrm_id: str) -> MessageRecord | None:
        """A message by amoCRM's message id."""
        return await self._message(("scope_id", "amocrm_id"), (scope_id, amocrm_id), "amocrm")

    async def message_by_messenger(
        self, scope_id: str, conversation_id: str, messenger_id: str
    ) -> MessageRecord | None:
        """A message by the messenger's message id within one conversation."""
        where = ("scope_id", "conversation_id", "messenger_id")
        return await self._message(where, (scope_id, conversation_id, messenger_id), "messenger")

    async def get_state(self, namespace: str, key: str) -> bytes | None:
        """A value an adapter stored."""
        row = await self._row("value", "state", ("namespace", "key"), (namespace, key))
        return None if row is None else bytes(row[0])


ACTIVITY_SCHEMA = """
ALTER TABLE conversations ADD COLUMN last_msgid TEXT;
ALTER TABLE conversations ADD COLUMN last_direction TEXT;
ALTER TABLE conversations ADD COLUMN last_preview TEXT;
ALTER TABLE conversations ADD COLUMN last_at {time_type};
ALTER TABLE conversations ADD COLUMN last_out_at {time_type};
CREATE INDEX conversations_recent ON conversations (scope_id, last_at);
"""
"""A conversation's newest message (:class:`~.base.Activity`) and when its last one went out, on its
own row: the store keeps one preview per conversation, however many messages cross."""


def activity_write(placeholder: str) -> str:
    """The update that makes an :class:`~.base.Activity` its conversation's newest message unless the
    conversation has a later one (parameters: :func:`activity_params`)."""
    p = placeholder
    return (
        f"UPDATE conversations SET last_msgid = {p}, last_direction = {p}, last_preview = {p}, last_at = {p}, "
        f"last_out_at = CASE WHEN CAST({p} AS TEXT) = 'out' THEN {p} ELSE last_out_at END "
        f"WHERE scope_id = {p} AND conversation_id = {p} AND (last_at IS NULL OR last_at <= {p})"
    )


def activity_params(a: Activity) -> tuple[Any, ...]:
    """The parameters of :func:`activity_write` for ``a`` (its preview cut to :data:`~.base.PREVIEW_CHARS`)."""
    text = a.preview[:PREVIEW_CHARS]
    return (a.msgid, a.direction, text, a.at, a.direction, a.at, a.scope_id, a.conversation_id, a.at)


class Finish(NamedTuple):
    """What a finish writes."""

    job_id: int
    conversations: Sequence[ConversationRecord]
    messages: Sequence[MessageRecord]
    activity: Sequence[Activity]


Grouped = tuple[list[ConversationRecord], list[MessageRecord], list[tuple[Activity, float | None]]]


def grouped(finishes: Sequence[Finish]) -> Grouped | None:
    """The records of ``finishes`` as fewer writes that leave what writing them one finish after the other
    would: one record per conversation (folded as a finish merges it), the last record of each message,
    per conversation the newest message a run of its activities would leave, with when the last of
    them to go out would have set ``last_out_at`` (:func:`grouped_activity_write`). None where the order could
    tell: a chat given to two conversations, a conversation given two chats, or a newest message given
    before its conversation's first record (then they are written in turn)."""
    chats: dict[tuple[str, str], tuple[str, str]] = {}
    rows: dict[tuple[str, str], ConversationRecord] = {}
    first: dict[tuple[str, str], int] = {}
    for i, f in enumerate(finishes):
        for r in f.conversations:
            key, chat = (r.scope_id, r.conversation_id), (r.instance, r.chat)
            if chats.setdefault(chat, key) != key:
                return None
            row = rows.get(key)
            if row is not None and (row.instance, row.chat) != chat:
                return None
            rows[key] = r if row is None else merged(row, r)
            first.setdefault(key, i)
    messages = {(m.scope_id, m.msgid): m for f in finishes for m in f.messages}
    newest: dict[tuple[str, str], Activity] = {}
    out: dict[tuple[str, str], float] = {}
    for i, f in enumerate(finishes):
        for a in f.activity:
            key = (a.scope_id, a.conversation_id)
            if first.get(key, i) > i:
                return None
            best = newest.get(key)
            if best is None or a.at >= best.at:  # it would be written (given the stored row allows the best)
                newest[key] = a
                if a.direction == "out":
                    out[key] = a.at
    return list(rows.values()), list(messages.values()), [(a, out.get(key)) for key, a in newest.items()]


def grouped_activity_write(placeholder: str) -> str:
    """One conversation's newest message of :func:`grouped`'s activity, unless the conversation has a later
    one, and ``last_out_at`` as the run's last message out would have set it (parameters:
    :func:`grouped_activity_params`)."""
    p = placeholder
    return (
        f"UPDATE conversations SET last_msgid = {p}, last_direction = {p}, last_preview = {p}, last_at = {p}, "
        f"last_out_at = CASE WHEN {p} IS NOT NULL AND (last_at IS NULL OR last_at <= {p}) THEN {p} "
        f"ELSE last_out_at END WHERE scope_id = {p} AND conversation_id = {p} AND (last_at IS NULL OR last_at <= {p})"
    )


def grouped_activity_params(a: Activity, out_at: float | None) -> tuple[Any, ...]:
    """The parameters of :func:`grouped_activity_write` for ``a`` and its run's ``out_at``."""
    text = a.preview[:PREVIEW_CHARS]
    return (a.msgid, a.direction, text, a.at, out_at, out_at, out_at, a.scope_id, a.conversation_id, a.at)


def activity_reads(placeholder: str) -> tuple[str, str]:
    """The queries of recent conversations (parameters: scope id, limit) and of each source's last
    messages in and out (parameter: scope id); both read one account's rows only."""
    p = placeholder
    recent = (
        "SELECT c.conversation_id, c.instance, c.chat, c.last_msgid, c.last_direction, c.last_preview, c.last_at, "
        "m.status FROM conversations c LEFT JOIN messages m ON m.scope_id = c.scope_id AND m.msgid = c.last_msgid "
        f"WHERE c.scope_id = {p} AND c.last_at IS NOT NULL ORDER BY c.last_at DESC LIMIT {p}"
    )
    sources = (
        "SELECT instance, MAX(last_client_at), MAX(last_out_at) FROM conversations "
        f"WHERE scope_id = {p} GROUP BY instance ORDER BY instance"
    )
    return recent, sources


def recent_row(row: tuple[Any, ...]) -> RecentConversation:
    """A row of :func:`activity_reads`' first query as a record."""
    return RecentConversation(*row)


def activity_row(row: tuple[Any, ...]) -> SourceActivity:
    """A row of :func:`activity_reads`' second query as a record."""
    return SourceActivity(*row)
