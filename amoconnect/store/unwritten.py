"""Mapping records a store has accepted but not committed yet, seen by its own lookups meanwhile;
and, while a conversation's backlog runs as a pipeline, its row without a read per message.

:meth:`~amoconnect.store.base.Store.finish_soon` returns before its transaction commits, and the
relay then runs the conversation's next job at once: that job must read what the previous one
wrote (its conversation's amoCRM chat id and reply window, the message a client's edit or quote
refers to). Until the commit, the records wait here, in the order they were given, and every
lookup of the mapping applies them to what it read from the database the way the database will
(a conversation merged, a message replaced, a chat taken over). Only this process sees them. A
read that was under way while some of them committed applies those too: its answer may predate
their commit (applying a record the row already has changes nothing).

**Known rows.** In such a pipeline every job looks its conversation up by chat. While records of
the chat wait here (this process holds the chat's jobs and runs them ahead), the row the database
last answered for the chat, with this process's own commits since folded in, stands for the
database's for up to ``FRESH`` seconds after that read: the lookup reads nothing. The rule that
makes it safe: jobs of one chat run only in the process holding them, and every write of this
process goes through this store, which folds it in (:meth:`Unwritten.committed`) or forgets the
row (:meth:`Unwritten.forget`: a finish that waited, ``put_conversation``, a finish whose outcome
is unknown, a job another process took over). What remains are other writers of the row: an
outbound job of the same conversation (another key, perhaps another process) recording amoCRM's
chat id, the CLI linking a chat, another conversation taking the chat over. What they wrote in the
last ``FRESH`` seconds may be missed, as a lookup that raced them would miss it; a job's records
are merged, not put (a known chat id stays unless the job has one, and amojo's answer to each
message carries it), and the row is read again at the latest ``FRESH`` seconds later.

**Claimed rows.** A store that reads a job's conversation with the job as it claims it (PostgreSQL,
:attr:`~amoconnect.store.base.NewJob.chat`) keeps that row for the job's own lookup, whether or not
records of the chat wait here, and as a known row after it (:meth:`Unwritten.claimed`). A job of the
chat that this process takes after another process may have run one comes with a row of its own (a
claim, or the finish of the job before): only a take ahead does not, and it follows a job this
process held all along.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import msgspec

from .base import ConversationRecord, MessageRecord

__all__ = ["FRESH", "SOON_GROUP", "SOON_LINGER", "Read", "Unwritten", "merged"]

SOON_GROUP = 16
SOON_LINGER = 0.005
"""Finishes accepted without waiting (:meth:`~amoconnect.store.base.Store.finish_soon`) commit
together: up to ``SOON_GROUP`` of them, or what arrived ``SOON_LINGER`` seconds after the first
(a conversation's pipeline hands one over per amojo round trip), or (SQLite) with the next other
write but an enqueue."""
FRESH = 1.0
"""Seconds a known row (see above) stands for the database's after the read it came from."""


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
class Read:
    """A lookup's read under way: the batches committed meanwhile, and the conversations this process wrote
    otherwise meanwhile (:meth:`Unwritten.reading`, :meth:`Unwritten.forget`)."""

    epoch: int
    started: float
    since: list[_Batch] = field(default_factory=list)
    forgotten: list[ConversationRecord] = field(default_factory=list)


@dataclass
class _Known:
    record: ConversationRecord
    read_at: float
    """When the read it came from started (``time.monotonic``)."""
    claimed: bool = False
    """Read with a job as it was claimed (:meth:`Unwritten.claimed`), and no lookup used it yet: it stands
    even while no record of the chat waits here."""


_Pair = tuple[str, str | None]
"""A pair a lookup matches conversations by: instance and chat, or scope and amoCRM's chat id."""
_Id = tuple[str, str]
"""A conversation's scope and our id."""


@dataclass
class Unwritten:
    """The records of the writes accepted and not committed yet, oldest first, and the known rows.

    Both are indexed, so that a lookup costs the same however many finishes wait (a busy PostgreSQL
    store holds dozens): the held conversations by the pairs lookups match them by, the known rows by
    their conversation."""

    _batches: list[_Batch] = field(default_factory=list)
    _reads: list[Read] = field(default_factory=list)
    _known: dict[tuple[str, str], _Known] = field(default_factory=dict)
    _known_chats: dict[_Id, set[tuple[str, str]]] = field(default_factory=dict)
    """The chats whose known rows are a conversation's (one, unless another writer moved it meanwhile)."""
    _pruned_at: float = 0.0
    """When :meth:`keep` last dropped the known rows past :data:`FRESH`."""
    _epoch: int = 0
    """Counts :meth:`forget` of all: a read that started before one is not kept as a known row."""
    _held_by: dict[tuple[str, _Pair], dict[_Id, int]] = field(default_factory=dict)
    """The held conversation records by ``("chat", (instance, chat))`` and ``("amocrm", (scope, amoCRM's
    chat id))``: their conversations, with how many records each, in the order they came."""
    _flat: tuple[list[ConversationRecord], list[MessageRecord]] | None = None
    """The held records, oldest first, while no batch was added or taken since (every lookup reads them)."""

    def __bool__(self) -> bool:
        return bool(self._batches)

    def add(self, conversations: Sequence[ConversationRecord], messages: Sequence[MessageRecord]) -> object:
        """Hold these records until :meth:`committed` or :meth:`drop` is called with the returned token."""
        batch = _Batch(tuple(conversations), tuple(messages))
        if batch.conversations or batch.messages:
            self._batches.append(batch)
            self._count(batch, 1)
            self._flat = None
        return batch

    def _count(self, batch: _Batch, step: int) -> None:
        """Count ``batch``'s conversation records in :attr:`_held_by` (``step``: 1) or out of it (-1)."""
        for record in batch.conversations:
            conversation = (record.scope_id, record.conversation_id)
            for by in _BY:
                key = (by, _pair(record, by))
                counts = self._held_by.setdefault(key, {})
                left = counts.get(conversation, 0) + step
                if left:
                    counts[conversation] = left
                else:
                    del counts[conversation]
                    if not counts:
                        del self._held_by[key]

    def committed(self, token: object) -> None:
        """The records of ``token`` are in the database: the reads under way apply them, the known rows
        take them in."""
        if not self._take(token):
            return
        assert isinstance(token, _Batch)
        for read in self._reads:
            read.since.append(token)
        for record in token.conversations:
            self._fold(record)

    def drop(self, token: object) -> None:
        """The records of ``token`` were not committed, or whether they were is unknown (a known row of
        their chats may lack them: forgotten). Nothing once :meth:`committed`."""
        if self._take(token):
            assert isinstance(token, _Batch)
            if token.conversations:
                self.forget(token.conversations)

    def _take(self, token: object) -> bool:
        for i, batch in enumerate(self._batches):
            if batch is token:
                del self._batches[i]
                self._count(batch, -1)
                self._flat = None
                return True
        return False

    # -- known rows ----------------------------------------------------------------------
    def forget(self, records: Iterable[ConversationRecord] | None = None) -> None:
        """This process wrote these conversations otherwise (all: None, or another process may have taken
        a job over): the known rows of their chats and ids are read again, and a read under way keeps none
        of them (of all: none at all)."""
        if records is None:
            self._epoch += 1
            self._known.clear()
            self._known_chats.clear()
            return
        records = list(records)
        for read in self._reads:
            read.forgotten.extend(records)
        for record in records:
            for chat in self._touched(record):
                self._unknow(chat)

    def known(self, chat: tuple[str, str]) -> ConversationRecord | None:
        """The conversation of ``chat`` (instance, chat) as stored, without a read: while records of the chat
        wait here, up to :data:`FRESH` seconds after the read. None when it must be read."""
        found = self._known.get(chat)
        if found is None:
            return None
        if time.monotonic() - found.read_at > FRESH or not (found.claimed or self._waiting(chat)):
            self._unknow(chat)
            return None
        found.claimed = False  # a row claimed with a job answers its lookup, then serves as any known row
        return found.record

    def keep(self, chat: tuple[str, str], read: Read, row: ConversationRecord | None) -> None:
        """Keep the row a read by ``chat`` found, with the batches committed meanwhile folded in, as the
        chat's known row: while records of the chat wait here, and unless the chat or the row's conversation
        was forgotten since the read began (a finish of other conversations meanwhile leaves it be)."""
        if row is not None and self._waiting(chat):
            self._keep(chat, read, row, claimed=False)

    def claimed(self, chat: tuple[str, str], read: Read, row: ConversationRecord) -> None:
        """Keep the row of ``chat`` a claim read with a job of the chat, for the job's own lookup: it answers
        the next lookup of the chat within :data:`FRESH` seconds unless forgotten meanwhile, and is a known
        row from then on (the lookups after it need records of the chat waiting here)."""
        self._keep(chat, read, row, claimed=True)

    def _keep(self, chat: tuple[str, str], read: Read, row: ConversationRecord, *, claimed: bool) -> None:
        if read.epoch != self._epoch:
            return
        if any((r.instance, r.chat) == chat or _same(r, row) for r in read.forgotten):
            return
        now = time.monotonic()
        if now - self._pruned_at > FRESH / 2:  # chats whose pipelines ended: no lookup of theirs came to drop them
            self._pruned_at = now
            for key in [key for key, known in self._known.items() if known.read_at < now - FRESH]:
                self._unknow(key)
        for batch in read.since:
            for record in batch.conversations:
                folded = _folded(chat, row, record)
                if folded is None:
                    return
                row = folded
        self._unknow(chat)
        self._known[chat] = _Known(row, read.started, claimed)
        self._known_chats.setdefault((row.scope_id, row.conversation_id), set()).add(chat)

    def _unknow(self, chat: tuple[str, str]) -> None:
        known = self._known.pop(chat, None)
        if known is None:
            return
        conversation = (known.record.scope_id, known.record.conversation_id)
        chats = self._known_chats[conversation]
        chats.discard(chat)
        if not chats:
            del self._known_chats[conversation]

    def _touched(self, record: ConversationRecord) -> list[tuple[str, str]]:
        """The chats whose known rows ``record`` may change: its chat's, and its conversation's."""
        chat = (record.instance, record.chat)
        others = self._known_chats.get((record.scope_id, record.conversation_id))
        return [chat, *(c for c in others if c != chat)] if others else [chat]

    def _waiting(self, chat: tuple[str, str]) -> bool:
        return ("chat", chat) in self._held_by

    def _fold(self, record: ConversationRecord) -> None:
        """A committed record into the known rows."""
        for chat in self._touched(record):
            known = self._known.get(chat)
            if known is None:
                continue
            folded = _folded(chat, known.record, record)
            if folded is None:
                self._unknow(chat)
            else:
                known.record = folded

    @contextlib.contextmanager
    def reading(self) -> Iterator[Read]:
        """Around a lookup's read: what commits meanwhile is in :attr:`Read.since`."""
        read = Read(self._epoch, time.monotonic())
        self._reads.append(read)
        try:
            yield read
        finally:
            self._reads.remove(read)

    # -- the overlay ---------------------------------------------------------------------
    def _held(self) -> tuple[list[ConversationRecord], list[MessageRecord]]:
        if self._flat is None:
            self._flat = (
                [c for batch in self._batches for c in batch.conversations],
                [m for batch in self._batches for m in batch.messages],
            )
        return self._flat

    def _conversations(self, since: Sequence[_Batch] = ()) -> list[ConversationRecord]:
        held = self._held()[0]
        return [c for batch in since for c in batch.conversations] + held if since else held

    def _messages(self, since: Sequence[_Batch] = ()) -> list[MessageRecord]:
        held = self._held()[1]
        return [m for batch in since for m in batch.messages] + held if since else held

    def conversation(
        self,
        stored: ConversationRecord | None,
        *,
        scope_id: str,
        conversation_id: str,
        since: Sequence[_Batch] = (),
    ) -> ConversationRecord | None:
        """The conversation of our id as it will be once the held records (and ``since``'s) are committed."""
        found = stored
        for record in self._conversations(since):
            if (record.scope_id, record.conversation_id) == (scope_id, conversation_id):
                found = record if found is None else merged(found, record)
            elif found is not None and (record.instance, record.chat) == (found.instance, found.chat):
                found = None  # another conversation took the chat over: this one's row is deleted
        return found

    def conversation_ids(self, match: tuple[str, str], by: str, since: Sequence[_Batch] = ()) -> list[tuple[str, str]]:
        """Scope and our id of the held conversations whose ``by`` pair (``"chat"``: instance and chat;
        ``"amocrm"``: scope and amoCRM's chat id) is ``match``."""
        committed = (c for batch in since for c in batch.conversations)
        found = [(c.scope_id, c.conversation_id) for c in committed if _pair(c, by) == match]
        found.extend(self._held_by.get((by, match), ()))
        return list(dict.fromkeys(found))

    def message(
        self, stored: MessageRecord | None, match: tuple[str, ...], by: str, since: Sequence[_Batch] = ()
    ) -> MessageRecord | None:
        """The message whose ``by`` fields (``"msgid"``: scope and msgid; ``"amocrm"``: scope and amoCRM's id;
        ``"messenger"``: scope, conversation and messenger id) are ``match``, once the held records are
        committed (a message record replaces the stored one of its msgid)."""
        held = self._messages(since)
        for record in reversed(held):
            if _fields(record, by) == match:
                return record
        if stored is not None and any((m.scope_id, m.msgid) == (stored.scope_id, stored.msgid) for m in held):
            return None  # replaced by a record that no longer matches
        return stored


def _folded(chat: tuple[str, str], row: ConversationRecord, record: ConversationRecord) -> ConversationRecord | None:
    """The known row of ``chat`` once ``record`` is committed: merged into it when it is the row's own
    (same conversation, same chat); None when the record may have changed it otherwise (a chat taken
    over or moved: read it again)."""
    same_chat, same_row = (record.instance, record.chat) == chat, _same(row, record)
    if same_chat and same_row:
        return merged(row, record)
    return None if same_chat or same_row else row


def _same(a: ConversationRecord, b: ConversationRecord) -> bool:
    return (a.scope_id, a.conversation_id) == (b.scope_id, b.conversation_id)


_BY = ("chat", "amocrm")


def _pair(record: ConversationRecord, by: str) -> _Pair:
    """The pair of ``record`` a lookup ``by`` chat or by amoCRM's chat id matches."""
    return (record.instance, record.chat) if by == "chat" else (record.scope_id, record.amocrm_chat_id)


def _fields(record: MessageRecord, by: str) -> tuple[str | None, ...]:
    if by == "msgid":
        return (record.scope_id, record.msgid)
    if by == "amocrm":
        return (record.scope_id, record.amocrm_id)
    return (record.scope_id, record.conversation_id, record.messenger_id)
