"""What the relay needs from durable storage, independent of the engine.

A store keeps four things (``docs/design``): the job queue (with dead letters), the dedup
keys that make every inbound edge idempotent, the id mapping between amoCRM, us and the
messenger, and small key-value state for adapters (e.g. a long-polling offset). It also hands
out the rate limiters, so that a limit holds for every process sharing the store.

Every method but :meth:`Store.abandon` and :meth:`Store.limiter` is a coroutine, and every write
is durable when it returns.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Literal, Protocol

import msgspec

from ..ratelimit import Limiter

__all__ = [
    "PREVIEW_CHARS",
    "Activity",
    "ConversationRecord",
    "DeadLetter",
    "Job",
    "MessageRecord",
    "NewJob",
    "RecentConversation",
    "SourceActivity",
    "Store",
    "Taker",
    "preview",
]

JobState = Literal["queued", "running"]


class NewJob(msgspec.Struct, frozen=True):
    """A unit of work to enqueue. Jobs with the same ``key`` run one at a time, in order."""

    kind: str
    """What the job does, e.g. ``"amocrm_hook"`` or ``"inbound"``; the relay dispatches on it."""
    key: str
    """Ordering key, normally one conversation: jobs sharing it never overtake each other."""
    payload: bytes
    """Opaque to the store."""
    scope_id: str = ""
    """The amoCRM connection the job belongs to, for logs, metrics and purges."""
    delay: float = 0.0
    """Seconds from now before the job may run."""
    chat: tuple[str, str] | None = None
    """The messenger chat (instance, chat) whose conversation the job's handler looks up
    (:meth:`Store.conversation_by_chat`): a store may read that conversation with the job when it is
    claimed and answer the handler's lookup without another read (PostgreSQL does)."""


class Job(msgspec.Struct, frozen=True):
    """A job taken from the queue; ``attempts`` counts this attempt too."""

    id: int
    kind: str
    key: str
    payload: bytes
    scope_id: str
    attempts: int
    created_at: float
    last_error: str | None = None


class DeadLetter(msgspec.Struct, frozen=True):
    """A job that ran out of attempts or failed for good; a person can re-queue it."""

    id: int
    kind: str
    key: str
    payload: bytes
    scope_id: str
    attempts: int
    created_at: float
    failed_at: float
    error: str


class ConversationRecord(msgspec.Struct, frozen=True):
    """One chat as the three parties know it."""

    scope_id: str
    conversation_id: str
    """Ours, sent to amojo as ``conversation_id``."""
    instance: str
    """The messenger instance (source) that carries the chat."""
    chat: str
    """The messenger's chat id (or, for a chat started by a manager, the address we wrote to)."""
    amocrm_chat_id: str | None = None
    client_id: str | None = None
    """Our id of the client, sent to amojo as ``sender.id``."""
    last_client_at: float | None = None
    """Unix time of the client's last message: the reply window runs from here."""
    ref_pending: bool = False
    """Set for a chat a manager started: the next client message also carries ``conversation_ref_id``."""


class MessageRecord(msgspec.Struct, frozen=True):
    """One message as the three parties know it."""

    scope_id: str
    msgid: str
    """Ours, sent to amojo as ``msgid`` (inbound) or amoCRM's id reused as ours (outbound)."""
    conversation_id: str
    direction: Literal["in", "out"]
    amocrm_id: str | None = None
    messenger_id: str | None = None
    status: int = 0
    """0 sent, 1 delivered, 2 read, -1 failed (amojo's ``delivery_status`` values)."""


PREVIEW_CHARS = 120
"""The longest preview of a message text a store keeps (a longer one is cut)."""


def preview(text: str) -> str:
    """``text`` on one line, cut to :data:`PREVIEW_CHARS` characters (``…`` marks a cut).

    Only the text's beginning is read when it gives a preview that long: a message of 100 KB is
    not split into words to keep 120 characters of it.
    """
    head = text[: 2 * PREVIEW_CHARS]
    line = " ".join(head.split())  # the line of the whole text begins with this one
    if len(line) <= PREVIEW_CHARS and len(head) < len(text):
        line = " ".join(text.split())  # mostly blanks so far: the whole text it is
    return line if len(line) <= PREVIEW_CHARS else line[: PREVIEW_CHARS - 1] + "…"


class Activity(msgspec.Struct, frozen=True):
    """A conversation's newest message as the console shows it, written by :meth:`Store.finish`.

    The store keeps one per conversation: a later one (by ``at``) replaces it, an earlier one is
    ignored. No message text is kept beyond this preview."""

    scope_id: str
    conversation_id: str
    msgid: str
    """The message's record (its delivery status is read from there)."""
    direction: Literal["in", "out"]
    preview: str
    """A short text of the message (:func:`preview`); the store cuts it to :data:`PREVIEW_CHARS`."""
    at: float
    """Unix time of the message."""


class RecentConversation(msgspec.Struct, frozen=True):
    """A conversation with its newest message (:meth:`Store.recent_conversations`)."""

    conversation_id: str
    instance: str
    chat: str
    msgid: str
    direction: Literal["in", "out"]
    preview: str
    at: float
    status: int | None
    """The message's delivery status (:attr:`MessageRecord.status`); None when it has no record."""


class SourceActivity(msgspec.Struct, frozen=True):
    """When a source's last messages went in and out (:meth:`Store.source_activity`)."""

    instance: str
    last_in: float | None
    """The client's last message in any of the source's conversations."""
    last_out: float | None
    """The last message relayed to the client."""


class Taker(Protocol):
    """Who runs the jobs a store hands over at their enqueue (:meth:`Store.hand_off_to`): the relay."""

    def offer(self) -> bool:
        """Whether a job enqueued now may be handed over; True reserves a slot for it. Called inside
        the enqueue's transaction, so it must not block."""

    def handed(self, job: Job | None) -> None:
        """After the commit: the job to run in the reserved slot (marked running, its attempt counted);
        ``None`` when the reservation is given back (the transaction did not commit)."""


class Store(Protocol):
    """The interface the relay programs against; SQLite is the embedded implementation."""

    where: str
    """Where the store is, for messages and logs: a file path, or a URL without its password."""

    async def migrate(self) -> list[int]:
        """Bring the schema up to date (``amoconnect migrate``); the versions applied, oldest first."""

    async def open(self, *, recover: bool = True) -> None:
        """Check (PostgreSQL) or create and migrate (SQLite) the schema and recover jobs a crash left running.

        The connector opens its store with ``recover``; commands that run beside it pass False, so that
        they leave its running jobs alone (SQLite: and do not take the one-connector-per-file lock).
        """

    async def close(self) -> None:
        """Flush and release everything."""

    # -- queue ---------------------------------------------------------------------------
    async def enqueue(self, jobs: Sequence[NewJob], *, dedup: Sequence[str] = ()) -> bool:
        """Durably add ``jobs``, unless any key in ``dedup`` was seen before (then add nothing, return False)."""

    async def claim(self, limit: int) -> list[Job]:
        """Take up to ``limit`` due jobs whose key has no earlier unfinished job, marking them running."""

    async def finish(
        self,
        job_id: int,
        *,
        conversations: Sequence[ConversationRecord] = (),
        messages: Sequence[MessageRecord] = (),
        then: Sequence[NewJob] = (),
        take_next: bool = False,
        activity: Sequence[Activity] = (),
        durable: bool = True,
    ) -> Job | None:
        """Mark a job done, in the same transaction upserting mapping records and enqueueing follow-ups.

        A conversation is merged into the stored one, which may be newer than the record the job
        read: ``last_client_at`` never moves back, and a known ``amocrm_chat_id`` or ``client_id``
        stays when the record has none. Messages replace theirs. Each ``activity`` becomes its
        conversation's newest message (after the records are written; one small update each) unless
        the conversation has a later one; a conversation the store does not have is left alone.

        With ``take_next``, the same transaction also claims the next job of the job's key when it
        is due, and returns it (else None): a conversation's backlog runs without a claim between
        its jobs. A finish that took the next job and enqueued nothing made nothing new claimable:
        it wakes no :meth:`wait_for_work`, in this process or another.

        With ``durable=False`` and no ``then``, it returns once the finish is committed and seen by
        every later read and write, without waiting for it to reach the disk (:meth:`flush` waits):
        a power cut may then undo it, and the job runs again. Only a job that may run twice
        without harm (its effects idempotent) is finished so. A finish with follow-ups is always
        durable: no follow-up may run before the finish that enqueued it is on disk.
        """

    def finish_soon(
        self,
        job_id: int,
        *,
        conversations: Sequence[ConversationRecord] = (),
        messages: Sequence[MessageRecord] = (),
        activity: Sequence[Activity] = (),
    ) -> asyncio.Future[None]:
        """Accept a job's finish without waiting for it: the job may run again without harm (its effects
        idempotent), and its conversation's next job is already held (:meth:`take_ahead`) and starts now.

        Returns at once. From then on this process's lookups see ``conversations`` (merged as
        :meth:`finish` merges them) and ``messages`` (``activity`` is written as :meth:`finish`
        writes it, seen once committed). The finishes accepted commit in the order
        accepted, several in one transaction, before any later write of this process that follows
        them on the same engine's writer (SQLite) or that awaited them (PostgreSQL), without waiting
        for the disk (:meth:`flush`); the result resolves once committed, with ``StoreError`` if not
        (the job stays running: :meth:`abandon` it, or finish it again). A crash before the commit
        leaves the job to run again: a conversation's unfinished jobs run again in order.
        """

    async def take_ahead(self, job: Job, limit: int) -> list[Job]:
        """Also take (mark running) up to ``limit`` jobs that follow ``job`` (running, held by this process)
        directly in its key's order: due, of its kind, up to the first that is not; none when a queued job
        of the key comes before ``job``. They are this process's, like claimed ones, until finished,
        retried, buried or given back (:meth:`release`)."""

    async def release(self, job_ids: Sequence[int]) -> None:
        """Give jobs taken and not run back to the queue as they were (their attempt not counted)."""

    async def flush(self, *, linger: float = 0.0) -> None:
        """Return once every write committed before the call is on disk (a :meth:`finish` with
        ``durable=False`` among them); at once when there is none. Later writes are durable only
        after earlier ones: a durable write makes every earlier one durable too. With ``linger``, it
        first waits up to that many seconds for a durable write of another caller (an enqueue) to do
        so, and writes to the disk itself only if none did."""

    async def retry(self, job_id: int, *, delay: float, error: str) -> None:
        """Put a job back to run again after ``delay`` seconds."""

    async def bury(self, job_id: int, *, error: str, then: Sequence[NewJob] = ()) -> None:
        """Move a job to the dead letters, enqueueing ``then`` in the same transaction."""

    def abandon(self, job_id: int) -> None:
        """Give up a claimed job whose outcome could not be recorded (the store was unavailable).

        It stays marked running, its conversation blocked, until the store queues it again and it
        runs again (at least once: its work may have been done): SQLite with its next claim that
        commits, PostgreSQL once the job's lease runs out (the heartbeat no longer extends it), in
        whichever process claims it then. No IO.
        """

    async def next_due_in(self) -> float | None:
        """Seconds until the earliest queued job is due (0 if one is due now), None if the queue is empty."""

    async def wait_for_work(self, max_wait: float) -> None:
        """Return when new work was committed, or after ``max_wait`` seconds."""

    def hand_off_to(self, taker: Taker | None) -> None:
        """Hand a job that becomes claimable at its enqueue straight to ``taker`` (None: stop).

        The enqueue's own transaction marks it running when ``taker`` offers a slot and no other job is
        due before it, so the relay runs it without a claim (a commit less per message at everyday
        rates) and the enqueue wakes no worker. A store may do without (PostgreSQL does: there the
        claims are cheaper than taking the job in a second statement of the enqueue's transaction).
        """

    async def dead_letters(self, limit: int = 100, *, scope_id: str | None = None) -> list[DeadLetter]:
        """Dead letters (of one account's ``scope_id`` when given), oldest first."""

    async def requeue(self, ids: Sequence[int] | None = None, *, scope_id: str | None = None) -> int:
        """Move dead letters (all when ``ids`` is None; only ``scope_id``'s when given) back to the queue;
        returns how many."""

    async def purge(self, ids: Sequence[int] | None = None, *, scope_id: str | None = None) -> int:
        """Delete dead letters (all when ``ids`` is None; only ``scope_id``'s when given); returns how many."""

    async def counts(self) -> dict[str, int]:
        """Jobs by state: ``queued``, ``running``, ``dead``."""

    async def probe(self) -> None:
        """A cheap durable write (one row of ``meta`` or ``state``): ``StoreError`` when the store
        cannot take new work now (unreachable, disk full, read-only, a SQLite file deleted or replaced)."""

    async def prune(self, *, dedup_older_than: float) -> dict[str, int]:
        """Age out what the store keeps for a while; how many of each kind went (``"dedup keys"``: 3).

        Dedup keys seen more than ``dedup_older_than`` seconds ago, button data whose time ran
        out (``"button data"``), and what the engine keeps of its own (PostgreSQL: finished jobs
        past ``finished_retention``, idle rate limit rows).
        """

    # -- mapping -------------------------------------------------------------------------
    async def conversation(self, scope_id: str, conversation_id: str) -> ConversationRecord | None:
        """A conversation by our id."""

    async def conversation_by_chat(self, instance: str, chat: str) -> ConversationRecord | None:
        """A conversation by the messenger's chat id."""

    async def conversation_by_amocrm(self, scope_id: str, amocrm_chat_id: str) -> ConversationRecord | None:
        """A conversation by amoCRM's chat id."""

    async def put_conversation(self, record: ConversationRecord) -> None:
        """Insert or replace a conversation, as it is (unlike :meth:`finish`, which merges)."""

    async def message(self, scope_id: str, msgid: str) -> MessageRecord | None:
        """A message by our msgid."""

    async def message_by_amocrm(self, scope_id: str, amocrm_id: str) -> MessageRecord | None:
        """A message by amoCRM's message id."""

    async def message_by_messenger(
        self, scope_id: str, conversation_id: str, messenger_id: str
    ) -> MessageRecord | None:
        """A message by the messenger's message id within one conversation."""

    async def put_message(self, record: MessageRecord) -> None:
        """Insert or replace a message."""

    # -- activity ------------------------------------------------------------------------
    async def recent_conversations(self, scope_id: str, limit: int = 50) -> list[RecentConversation]:
        """``scope_id``'s conversations that have an :class:`Activity`, newest first."""

    async def source_activity(self, scope_id: str) -> list[SourceActivity]:
        """When each source of ``scope_id``'s conversations last took in and sent out a message."""

    # -- leases --------------------------------------------------------------------------
    async def hold_lease(self, name: str, seconds: float) -> bool:
        """Take or renew the lease ``name`` for ``seconds``; False while another process holds it."""

    async def release_lease(self, name: str) -> None:
        """Give the lease ``name`` up if this process holds it."""

    # -- adapter state -------------------------------------------------------------------
    async def get_state(self, namespace: str, key: str) -> bytes | None:
        """A value an adapter stored."""

    async def set_state(self, namespace: str, key: str, value: bytes) -> None:
        """Store a value for an adapter."""

    async def delete_state(self, namespace: str, key: str) -> None:
        """Forget a value an adapter stored."""

    # -- button data ---------------------------------------------------------------------
    async def put_button_data(self, key: str, value: str, keep_for: float) -> None:
        """Keep a button's long data ``value`` under ``key`` for ``keep_for`` seconds from now
        (:mod:`amoconnect.buttondata`); putting it again extends it. :meth:`prune` drops it after."""

    async def button_data(self, key: str) -> str | None:
        """The button data kept under ``key``; ``None`` when never kept or its time ran out."""

    # -- rate limits ---------------------------------------------------------------------
    def limiter(self, name: str, rate: float, per: float = 1.0, burst: int | None = None) -> Limiter:
        """The rate limit called ``name`` (``telegram:bot1:chat:1/1s``, ``amocrm:account``), shared by its users.

        Every process on the store that asks for ``name`` shares the limit: SQLite's are in-process
        (one process owns the file), PostgreSQL's hold for the whole fleet. Keys within a limit are
        independent; different names never share state.
        """
        ...
