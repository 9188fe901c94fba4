"""The embedded store: one SQLite file in WAL mode, written by one writer with grouped commits.

Every write is a small function. The writer (a task on the event loop) takes all the
operations waiting at that moment, runs them in one transaction and commits once, so many
webhooks share one fsync while ``synchronous=FULL`` keeps each of them on disk before its
caller hears back; callers await a future the writer resolves after the commit. The
statements take microseconds and run on the loop itself; only ``COMMIT`` (and its fsync) runs on
the store's thread, and so do WAL checkpoints, between two batches (:meth:`SQLiteStore._checkpoint`).
A thread running the statements would hand the GIL
back and forth with the loop for every statement, and each hand-over waits for the loop's
switch interval: measured, that made a batch of a dozen operations take 7 ms instead of 2.
If an operation fails, the transaction is rolled back and the batch runs again with a
savepoint around each operation, so that only the failing one fails.

A batch of claims alone commits without an fsync (``synchronous=NORMAL`` for it): a claim lost
to a power cut only marks jobs running that opening the store queues again anyway, and the next
synced commit writes it down with everything before it. A claim that finds nothing due (asked of
the reading connection first) does not reach the writer at all. So does a batch of finishes with
``durable=False``: their callers hear back at the commit, and :meth:`SQLiteStore.flush` makes a
synced commit (one small write) only when such a commit is not yet on disk.

Enqueues commit ahead of the other writes waiting (a webhook's ack waits for its commit, not for
the finishes of a draining backlog), never twice in a row ahead of them.

Most jobs need no claim at all: an enqueue of one job that a claim would take first, while the
relay has a slot free (:meth:`SQLiteStore.hand_off_to`), marks it running in its own transaction
and hands it to the relay after the commit (after the acks), without waking the workers.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fcntl
import functools
import os
import queue
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import anyio
import structlog

from ..clock import SteadyClock
from ..crashpoints import crash_point
from ..errors import StoreError
from ..ratelimit import LocalLimiters, RateLimiter
from .base import (
    Activity,
    ConversationRecord,
    DeadLetter,
    Job,
    MessageRecord,
    NewJob,
    RecentConversation,
    SourceActivity,
    Taker,
)
from .ondisk import OnDisk
from .registry import ACCOUNT_IDS, ACCOUNT_STATE_REASONS, SQLiteRegistryRows, registry_schema
from .sql import (
    ACTIVITY_SCHEMA,
    AHEAD_OF_KEY,
    CLAIMABLE,
    HEAD_CLAIMED,
    HEADS_TABLE,
    MESSAGE_COLUMNS,
    NEXT_DUE,
    Finish,
    MappingLookups,
    activity_params,
    activity_reads,
    activity_row,
    activity_write,
    conversation_merged_in_place,
    conversation_params,
    conversation_writes,
    grouped,
    grouped_activity_params,
    grouped_activity_write,
    head_added,
    head_claimed,
    head_refreshed,
    message_params,
    recent_row,
)
from .unwritten import SOON_GROUP, SOON_LINGER, Unwritten

__all__ = ["SQLiteStore"]

T = TypeVar("T")

log = structlog.get_logger("amoconnect.store")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS queue (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    payload BLOB NOT NULL,
    scope_id TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'running')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_run REAL NOT NULL,
    created_at REAL NOT NULL,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS queue_key ON queue (key, id);
CREATE TABLE IF NOT EXISTS dead (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    payload BLOB NOT NULL,
    scope_id TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    created_at REAL NOT NULL,
    failed_at REAL NOT NULL,
    error TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS dedup (key TEXT PRIMARY KEY, seen_at REAL NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dedup_seen ON dedup (seen_at);
CREATE TABLE IF NOT EXISTS conversations (
    scope_id TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    instance TEXT NOT NULL,
    chat TEXT NOT NULL,
    amocrm_chat_id TEXT,
    client_id TEXT,
    last_client_at REAL,
    ref_pending INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (scope_id, conversation_id)
);
CREATE UNIQUE INDEX IF NOT EXISTS conversations_chat ON conversations (instance, chat);
CREATE INDEX IF NOT EXISTS conversations_amocrm ON conversations (scope_id, amocrm_chat_id);
CREATE TABLE IF NOT EXISTS messages (
    scope_id TEXT NOT NULL,
    msgid TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    direction TEXT NOT NULL CHECK (direction IN ('in', 'out')),
    amocrm_id TEXT,
    messenger_id TEXT,
    status INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (scope_id, msgid)
);
CREATE INDEX IF NOT EXISTS messages_amocrm ON messages (scope_id, amocrm_id);
CREATE INDEX IF NOT EXISTS messages_messenger ON messages (scope_id, conversation_id, messenger_id);
CREATE TABLE IF NOT EXISTS state (
    namespace TEXT NOT NULL,
    key TEXT NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (namespace, key)
);
CREATE TABLE IF NOT EXISTS button_data (key TEXT PRIMARY KEY, value TEXT NOT NULL, expires_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS button_data_expires ON button_data (expires_at);
"""

_HEAD_TRIGGERS = """
CREATE TRIGGER queue_added AFTER INSERT ON queue BEGIN {added}; END;
CREATE TRIGGER queue_claimed AFTER UPDATE OF state ON queue WHEN {claim} BEGIN {claimed}; END;
CREATE TRIGGER queue_changed AFTER UPDATE OF key, state, next_run ON queue WHEN NOT ({claim}) BEGIN {old}; {new}; END;
CREATE TRIGGER queue_removed AFTER DELETE ON queue BEGIN {old}; END;
""".format(
    added=head_added("NEW.key", "NEW.id", "NEW.next_run"),
    claim=HEAD_CLAIMED,
    claimed=head_claimed("NEW.key"),
    old="; ".join(head_refreshed("OLD.key")),
    new="; ".join(head_refreshed("NEW.key")),
)

_HEADS_KEYED = (
    """
    DROP INDEX IF EXISTS queue_due;
    DROP TRIGGER queue_added;
    DROP TRIGGER queue_claimed;
    DROP TRIGGER queue_changed;
    DROP TRIGGER queue_removed;
    CREATE TABLE heads_keyed (key TEXT PRIMARY KEY, id INTEGER NOT NULL, next_run REAL NOT NULL, busy BOOLEAN NOT NULL)
        WITHOUT ROWID;
    INSERT INTO heads_keyed SELECT key, id, next_run, busy FROM heads;
    DROP TABLE heads;
    ALTER TABLE heads_keyed RENAME TO heads;
    CREATE INDEX heads_due ON heads (next_run, id) WHERE NOT busy;
    """
    + _HEAD_TRIGGERS
)
"""Schema 10: the head records in one b-tree, keyed by the job key (a table with a rowid kept a second
one, its key's index, written with it), and ``queue_due`` gone (claims look in ``heads``; the counts
read ``queue_key`` and ``queue_running``): each job wrote both twice, at its enqueue and its finish."""

_SCHEMA_VERSION = 2
"""Versions up to ``_SCHEMA``'s only added tables (``CREATE ... IF NOT EXISTS``), so running it brings
any older file there: 2 added ``button_data``."""

MIGRATIONS: tuple[str, ...] = (
    # 3: head records of the queue's keys, kept by triggers (store/sql.py)
    HEADS_TABLE.format(id_type="INTEGER", time_type="REAL") + _HEAD_TRIGGERS,
    # 4: accounts and sources (store/registry.py)
    registry_schema(time_type="REAL", id_type="INTEGER"),
    # 5: amoCRM's numeric id of an account
    ACCOUNT_IDS.format(id_type="INTEGER"),
    # 6: why an account needs re-authorisation or was disconnected
    ACCOUNT_STATE_REASONS,
    # 7: a conversation's newest message and when its last one went out (store/sql.py)
    ACTIVITY_SCHEMA.format(time_type="REAL"),
    # 8: long payloads beside their rows (_SPILL_ABOVE)
    """
    CREATE TABLE payloads (id INTEGER PRIMARY KEY, payload BLOB NOT NULL);
    CREATE TRIGGER queue_payload_removed AFTER DELETE ON queue WHEN OLD.payload = x''
    BEGIN DELETE FROM payloads WHERE id = OLD.id; END;
    """,
    # 9: an account's dead letters found without reading every other account's
    "CREATE INDEX dead_scope ON dead (scope_id, id);",
    # 10: fewer pages written a job (_HEADS_KEYED)
    _HEADS_KEYED,
)
"""What each version after ``_SCHEMA``'s changed: version N is ``MIGRATIONS[N - 3]``. Never edit a released one."""

SCHEMA_VERSION = _SCHEMA_VERSION + len(MIGRATIONS)

_CHECKPOINT_FRAMES = 1000
"""A checkpoint once the WAL holds this many frames not yet copied to the database file: SQLite's own
``wal_autocheckpoint`` (off on the writer's connection: :meth:`SQLiteStore._checkpoint`)."""
_SHM_MX_FRAME = 16
_SHM_BACKFILLED = 96
"""Offsets in the WAL-index (``<file>-shm``, native byte order) of ``mxFrame``, the WAL's last committed
frame, and of ``nBackfill``, the frames a checkpoint has copied: https://www.sqlite.org/walformat.html,
a layout every SQLite since 3.7.0 shares with the others on a file."""
_WRITER_CACHE_KIB = 16_384
"""The writer connection's page cache (SQLite's default: 2,000 KiB). A burst of long messages in flight,
64 webhooks of 100 KB at a time, is 1,600 pages of payloads: in SQLite's default cache they were read
back from the file between the enqueue, the claim and the finish, 97 reads a message; in this one 47."""
_COMMIT_HERE_AT_MOST = 0.002
"""Seconds a durable commit (``COMMIT`` and the fsync of the WAL) may take on average and still run on
the event loop's thread (:meth:`SQLiteStore._commit_durably`); slower ones run on the store's thread."""
_COMMIT_HERE_SHARE = 0.1
"""The most of its time the event loop spends in durable commits made on its own thread."""
_COMMIT_HERE_GAP = 0.005
"""A durable commit runs on the event loop's thread only this long after the last one ended (wherever it
ran), and no sooner than 9 t after one of t seconds made there: commits at everyday rates, a tenth of
the loop's time at most. Commits closer together (a busy relay, acks to make) run on the store's thread."""
_PRUNE_CHUNK = 2_000
"""Rows a prune deletes a transaction: a few milliseconds of the writer, enqueues commit between them."""
BUSY_TIMEOUT_MS = 5000
"""How long a write waits for another process's write lock (e.g. a CLI command's) before it fails."""

_SPILL_ABOVE = 3_500
"""A job's payload longer than this is kept in ``payloads`` and its row's is empty, so that the row
stays within its page: SQLite rewrites a whole row when one of its columns changes size (a claim's
``state``), and a payload past the page is a chain of overflow pages written again with it."""
_PAYLOAD = (
    "CASE WHEN queue.payload = x'' THEN coalesce((SELECT p.payload FROM payloads p WHERE p.id = queue.id), x'') "
    "ELSE queue.payload END"
)
"""A job's payload, kept in its row or beside it (in ``SELECT ... FROM queue``)."""
_TAKEN = f"SELECT id, kind, key, {_PAYLOAD}, scope_id, attempts + 1, created_at, last_error FROM queue "
_CLAIM = _TAKEN + f"WHERE id IN ({CLAIMABLE.format(now='?', limit='?')}) ORDER BY next_run, id"
"""The jobs a claim takes (parameters: now, limit): index lookups in ``heads``, however long the queue."""
_ANY_DUE = CLAIMABLE.format(now="?", limit="1")
"""Whether a claim would find a job, and the first it would take (parameter: now)."""
_HEAD_OF_KEY = "SELECT id, busy, next_run FROM heads WHERE key = ?"
"""A key's head, if it has jobs left."""
_TAKE_ID = _TAKEN + "WHERE id = ?"
_AHEAD = _TAKEN + f"WHERE id IN ({AHEAD_OF_KEY.format(key='?', id='?', kind='?', now='?', limit='?')}) ORDER BY id"
"""The jobs :meth:`SQLiteStore.take_ahead` takes (parameters: :data:`AHEAD_OF_KEY`'s)."""
_TAKE_OVER_CHAT, _REPLACE_CONVERSATION, _MERGE_CONVERSATION = conversation_writes("?")
_MERGE_IN_PLACE = conversation_merged_in_place()
_ACTIVITY = activity_write("?")
_GROUPED_ACTIVITY = grouped_activity_write("?")
_RECENT, _SOURCE_ACTIVITY = activity_reads("?")

Operation = Callable[[sqlite3.Connection], Any]
_Op = tuple[Operation, "asyncio.Future[Any]", bool, bool, bool]
"""An operation, the future its caller awaits, whether its commit wakes the workers, whether it
must be on disk when its caller hears back (an fsync'd commit) and whether it touches the connection
alone (no state of the store's: it may run on the store's thread)."""
_Outcome = tuple["asyncio.Future[Any]", Any, BaseException | None]


_MARK_SEEN = "INSERT INTO dedup VALUES (?, ?) ON CONFLICT (key) DO NOTHING"
"""A webhook's dedup key, unless it is there already (then no row changes)."""
_INSERT_JOB = "INSERT INTO queue (kind, key, payload, scope_id, next_run, created_at) VALUES (?, ?, ?, ?, ?, ?)"


def _spilled(job: NewJob) -> bool:
    """Whether ``job``'s payload is kept beside its row (:data:`_SPILL_ABOVE`)."""
    return len(job.payload) > _SPILL_ABOVE


def _job_row(job: NewJob, now: float) -> tuple[Any, ...]:
    """:data:`_INSERT_JOB`'s parameters for ``job``, enqueued at ``now`` (a payload kept beside it: empty)."""
    return (job.kind, job.key, b"" if _spilled(job) else job.payload, job.scope_id, now + job.delay, now)


def _insert_job(conn: sqlite3.Connection, job: NewJob, now: float) -> int:
    """Insert ``job``, its payload beside its row if long; its id."""
    job_id = conn.execute(_INSERT_JOB, _job_row(job, now)).lastrowid
    assert job_id is not None
    if _spilled(job):
        conn.execute("INSERT INTO payloads VALUES (?, ?)", (job_id, job.payload))
    return job_id


def _insert_jobs(conn: sqlite3.Connection, jobs: Sequence[NewJob], now: float) -> None:
    if not any(_spilled(j) for j in jobs):
        conn.executemany(_INSERT_JOB, [_job_row(j, now) for j in jobs])
    else:  # in order: ids are the queue's order
        for job in jobs:
            _insert_job(conn, job, now)


def _bury(conn: sqlite3.Connection, where: str, params: tuple[Any, ...], *, error: str, now: float) -> int:
    """Move the jobs of ``queue`` matching ``where`` to ``dead``; how many."""
    conn.execute(
        f"INSERT OR REPLACE INTO dead SELECT id, kind, key, {_PAYLOAD}, scope_id, attempts, created_at, ?, ? "
        f"FROM queue WHERE {where}",
        (now, error, *params),
    )
    return int(conn.execute(f"DELETE FROM queue WHERE {where}", params).rowcount)


_RUNNING = "UPDATE queue SET state = 'running', attempts = attempts + 1 WHERE id = ?"


def _take(conn: sqlite3.Connection, rows: list[Any]) -> list[Job]:
    """Mark the jobs of ``rows`` (of :data:`_CLAIM`'s columns) running."""
    conn.executemany(_RUNNING, [(r[0],) for r in rows])
    return [Job(*r) for r in rows]


def _finished(conn: sqlite3.Connection, finish: Finish) -> str | None:
    """A finish's writes: the job out of the queue, its records in; the job's key (``None``: it was gone)."""
    done = conn.execute("DELETE FROM queue WHERE id = ? RETURNING key", (finish.job_id,)).fetchone()
    _records(conn, finish)
    return str(done[0]) if done else None


def _records(conn: sqlite3.Connection, finish: Finish) -> None:
    _upsert_conversations(conn, finish.conversations, merge=True)
    _upsert_messages(conn, finish.messages)
    for a in finish.activity:
        conn.execute(_ACTIVITY, activity_params(a))


class _FinishedTogether:
    """Finishes accepted without waiting (:meth:`SQLiteStore.finish_soon`), written as one operation in a few
    statements: their jobs out of the queue, their records in as if written one finish after the other
    (:func:`~.sql.grouped`; a drain's sixteen finishes were eighty statements, each a turn of the GIL
    between the store's thread and the loop). Its result: the error of each (None: written). If writing
    them together fails, the writer runs its batch again, each operation in a savepoint
    (:meth:`SQLiteStore._transaction`), and this one then writes each finish alone: one that fails
    fails alone."""

    def __init__(self, finishes: Sequence[Finish]) -> None:
        self.finishes = finishes
        self.failed = False

    def __call__(self, conn: sqlite3.Connection) -> list[Exception | None]:
        if self.failed:
            return [_finished_alone(conn, finish) for finish in self.finishes]
        try:
            _write_together(conn, self.finishes)
        except sqlite3.Error:
            self.failed = True
            raise
        return [None] * len(self.finishes)


def _finished_alone(conn: sqlite3.Connection, finish: Finish) -> Exception | None:
    conn.execute("SAVEPOINT alone")
    try:
        _finished(conn, finish)
    except sqlite3.Error as exc:
        conn.execute("ROLLBACK TO alone")
        conn.execute("RELEASE alone")
        return exc
    conn.execute("RELEASE alone")
    return None


def _write_together(conn: sqlite3.Connection, finishes: Sequence[Finish]) -> None:
    ids = [f.job_id for f in finishes]
    conn.execute(f"DELETE FROM queue WHERE id IN ({', '.join('?' * len(ids))})", ids)
    together = grouped(finishes)
    if together is None:  # written in turn
        for finish in finishes:
            _records(conn, finish)
        return
    conversations, messages, activity = together
    _upsert_conversations(conn, conversations, merge=True)
    _upsert_messages(conn, messages)
    conn.executemany(_GROUPED_ACTIVITY, [grouped_activity_params(a, out_at) for a, out_at in activity])


def _fan_out(futures: Sequence[asyncio.Future[None]], together: asyncio.Future[list[Exception | None]]) -> None:
    """The outcome of finishes written together (:class:`_FinishedTogether`), to each one's future."""
    failed = together.exception()
    errors = [failed] * len(futures) if failed is not None else together.result()
    for future, error in zip(futures, errors, strict=True):
        _settle(future, None, error)


def _upsert_conversations(conn: sqlite3.Connection, records: Sequence[ConversationRecord], *, merge: bool) -> None:
    """Write ``records``: each replaces its row, or (``merge``) merges into it, in place when it can
    (:func:`~.sql.conversation_merged_in_place`: a known chat's message, one statement instead of two
    and two index pages fewer)."""
    upsert = _MERGE_CONVERSATION if merge else _REPLACE_CONVERSATION
    for record in records:
        take_over, row = conversation_params(record)
        if merge and conn.execute(_MERGE_IN_PLACE, row).rowcount:
            continue
        conn.execute(_TAKE_OVER_CHAT, take_over)
        conn.execute(upsert, row)


def _upsert_messages(conn: sqlite3.Connection, records: Sequence[MessageRecord]) -> None:
    conn.executemany(
        f"INSERT OR REPLACE INTO messages ({MESSAGE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
        [message_params(r) for r in records],
    )


class SQLiteStore(SQLiteRegistryRows, MappingLookups):
    """:class:`~amoconnect.store.base.Store` on one SQLite file.

    ``synchronous`` is SQLite's pragma: ``FULL`` (the default) makes every acknowledged write
    survive power loss; grouped commits keep it fast. One process owns the file.

    Its times (when a job is due, when a key was seen) are ``clock()``'s, by default a
    :class:`~amoconnect.clock.SteadyClock`: a step of the wall clock neither stalls a retry nor
    runs it early.
    """

    placeholder = "?"

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: str = "FULL",
        batch_limit: int = 1024,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if synchronous.upper() not in {"FULL", "NORMAL", "EXTRA"}:
            raise StoreError(f"synchronous must be FULL, NORMAL or EXTRA, got {synchronous!r}")
        self.path = Path(path)
        self.where = str(self.path)
        self._watched = (self.where, f"{self.where}-wal")
        """The files :meth:`_files_changed` checks (a path of each, made once: it runs at every synced commit)."""
        self._synchronous = synchronous.upper()
        self._now = clock or SteadyClock()
        self._level = self._synchronous
        """The ``synchronous`` the writer's transaction under way commits with (claims: ``NORMAL``)."""
        self._fsyncs = self._synchronous == "FULL"
        """Whether a durable commit is ``COMMIT`` under ``synchronous=NORMAL`` followed by an fsync of the
        WAL (:meth:`_commit_synced`), which is what ``FULL`` does in WAL mode: the connection then never
        switches its ``synchronous`` between a durable batch and one that is not (two pragmas a message
        at everyday rates, with an enqueue durable and its finish not). ``EXTRA`` keeps SQLite's own."""
        self._commit_took: float | None = None
        """Seconds a durable commit took, on average (weighted to the recent ones; None: none yet)."""
        self._commit_here_from = 0.0
        """``perf_counter()`` time from which a durable commit may run on the event loop's thread again."""
        self._batch_limit = batch_limit
        self._pending: list[_Op] = []
        self._first: list[_Op] = []
        """Enqueues, committed ahead of the writes in ``_pending`` (:meth:`_submit`)."""
        self._soon: list[tuple[Finish, asyncio.Future[None]]] = []
        """Finishes accepted (:meth:`finish_soon`) and not handed to the writer yet."""
        self._soon_timer: asyncio.TimerHandle | None = None
        self._more = asyncio.Event()
        self._closing = False
        self._writer: asyncio.Task[None] | None = None
        self._committer: _Committer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()
        self._reader: sqlite3.Connection | None = None
        self._scanner: sqlite3.Connection | None = None
        """Reads that scan (:meth:`_scan`), on worker threads."""
        self._scanning = anyio.Lock()
        self._abandoned: list[int] = []
        self._files: tuple[tuple[int, int] | None, ...] = ()
        self._lost: str | None = None
        """Why new work is refused: the files were deleted or replaced under the open connections."""
        self._owner: int | None = None
        """The descriptor of the held ``<file>.lock`` while this store is the connector's own."""
        self.commits = 0
        """How many transactions were committed, for benchmarks."""
        self._disk = OnDisk()
        """Commits made without an fsync, and how many of them are known to be on disk (:meth:`flush`)."""
        self._flushes = 0
        """Flushes that wrote to the disk themselves (none lingered into another commit's fsync)."""
        self._shm: int | None = None
        """A descriptor of the WAL-index, read for how many frames await a checkpoint."""
        self._wal: int | None = None
        """A descriptor of the WAL, for its fsyncs (:meth:`_sync_wal`)."""
        self._limiters = LocalLimiters()
        self.unwritten = Unwritten()
        self._taker: Taker | None = None
        self._handing: list[tuple[Taker, Job]] = []
        """Jobs the transaction under way hands over (:meth:`hand_off_to`) once it commits."""

    # -- the writer ----------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Owner-only whatever the umask: SQLite gives the -wal and -shm files the database file's mode.
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={'NORMAL' if self._fsyncs else self._synchronous}")
        conn.execute("PRAGMA busy_timeout=0")  # the loop never waits for a lock: see _begin
        conn.execute("PRAGMA wal_autocheckpoint=0")  # a commit (some run on the loop) never checkpoints
        conn.execute("PRAGMA foreign_keys=ON")
        # Deleted content is zeroed where that costs no extra write (some builds, Debian's, zero every
        # freed page): a large job's overflow pages freed at its finish are not written once more as zeros.
        conn.execute("PRAGMA secure_delete=FAST")
        conn.execute(f"PRAGMA cache_size=-{_WRITER_CACHE_KIB}")
        return conn

    async def _write(self, conn: sqlite3.Connection) -> None:
        """Until closed: take the waiting operations, run them in one transaction, commit once."""
        try:
            while self._pending or self._first or not self._closing:
                if not self._pending and not self._first:
                    self._more.clear()
                    await self._more.wait()
                    continue
                first = self._first[: self._batch_limit]
                del self._first[: self._batch_limit]
                batch = self._pending[: self._batch_limit]
                del self._pending[: self._batch_limit]
                if first:
                    # Enqueues commit ahead of the writes queued before them (a webhook's ack waits for its
                    # commit), but never more than once in a row ahead of them.
                    self._deliver(*await self._execute(conn, first))
                if batch:
                    quick = [op for op in batch if not op[3]]
                    if quick and len(quick) < len(batch):
                        # Operations that need no fsync commit first, on their own: they need not wait for it.
                        self._deliver(*await self._execute(conn, quick))
                        batch = [op for op in batch if op[3]]
                    self._deliver(*await self._execute(conn, batch))
                await self._checkpoint(conn)  # between two batches: at everyday rates, while none waits
        finally:
            conn.close()

    async def _execute(self, conn: sqlite3.Connection, batch: list[_Op]) -> tuple[list[_Outcome], bool]:
        durable = any(op[3] for op in batch)
        unsynced = self._disk.unsynced
        try:
            self._sync(conn, durable=durable)
            if not durable and all(op[4] for op in batch):
                # Writes of the connection alone, not synced (a backlog's finishes, its takes ahead): run and
                # committed on the store's thread, while the loop goes on (acks, the next send).
                outcomes, wake = await self._off_loop(functools.partial(self._quietly, batch=batch), conn)
            else:
                await self._begin(conn)
                try:
                    outcomes, wake = self._transaction(conn, batch, isolate=False)
                except _OperationFailed:
                    # An operation failed: redo the batch with a savepoint around each, so it fails alone.
                    self._hand_over(committed=False)
                    await self._begin(conn)
                    outcomes, wake = self._transaction(conn, batch, isolate=True)
                if durable and self._lost is None and self._files_changed():
                    # Redo the batch: the operations that take new work now fail alone.
                    conn.execute("ROLLBACK")
                    self._hand_over(committed=False)
                    await self._begin(conn)
                    outcomes, wake = self._transaction(conn, batch, isolate=True)
                if durable:
                    await self._commit_durably(conn)
                else:
                    self._commit(conn)  # no fsync, no checkpoint (_sync): a few writes, quicker than a thread's turn
        except sqlite3.Error as exc:
            self._hand_over(committed=False)
            return self._all_failed(conn, batch, exc), False
        except BaseException:
            self._hand_over(committed=False)  # closing: the jobs marked running queue again at the next open
            raise
        if self._level != self._synchronous:
            self._disk.lazy_commit()
        else:
            self._disk.covered(unsynced)  # a synced commit puts every earlier one on disk too
        return outcomes, wake

    def _frames_to_checkpoint(self) -> int:
        """How many frames of the WAL a checkpoint would copy to the database file (0: cannot tell)."""
        if self._shm is None:
            return 0
        try:
            header = os.pread(self._shm, _SHM_BACKFILLED + 4, 0)
        except OSError:
            return 0
        if len(header) < _SHM_BACKFILLED + 4:
            return 0
        last = int.from_bytes(header[_SHM_MX_FRAME : _SHM_MX_FRAME + 4], sys.byteorder)
        return last - int.from_bytes(header[_SHM_BACKFILLED:], sys.byteorder)

    async def _checkpoint(self, conn: sqlite3.Connection) -> None:
        """Between two batches, once ``_CHECKPOINT_FRAMES`` frames wait: a PASSIVE checkpoint (it waits for
        no reader) on the store's thread. Made while no transaction of the writer is open, it copies the
        whole WAL, which the next transaction then writes again from its start: the WAL stays small (a
        checkpoint made beside a busy writer never catches up with it, and the WAL grows for good)."""
        if self._frames_to_checkpoint() < _CHECKPOINT_FRAMES:
            return
        try:
            await self._off_loop(_checkpoint_passive, conn)
        except sqlite3.Error as exc:  # the frames stay in the WAL: tried again after the next batch
            log.warning("WAL checkpoint failed", path=str(self.path), error=str(exc))

    def _file_ids(self) -> tuple[tuple[int, int] | None, ...]:
        """``(st_dev, st_ino)`` of the database file and of its WAL (None: missing)."""
        ids: list[tuple[int, int] | None] = []
        for path in self._watched:
            try:
                status = os.stat(path)
            except OSError:
                ids.append(None)
            else:
                ids.append((status.st_dev, status.st_ino))
        return tuple(ids)

    def _files_changed(self) -> bool:
        """Whether the files at the store's path are no longer the ones open (deleted or replaced).

        Commits would then go to unlinked files and vanish with the process: from now on new work
        is refused (:meth:`enqueue`, :meth:`probe`), while the jobs already stored are still
        worked and settled in the open files, so that nothing acknowledged is lost meanwhile.
        """
        if not self._files or self._file_ids() == self._files:
            return False
        self._lost = (
            f"SQLite store {self.path}: the database file was deleted or replaced while the connector ran; "
            "new work is refused until the connector is restarted"
        )
        log.critical(
            "store file deleted or replaced: refusing webhooks (503) from now on; the jobs already stored are "
            "still relayed; restart the connector once they are (restore the file from a backup first if it is gone)",
            path=str(self.path),
        )
        return True

    def _refuse_if_lost(self) -> None:
        if self._lost is not None:
            raise StoreError(self._lost)

    def _sync(self, conn: sqlite3.Connection, *, durable: bool) -> None:
        """Commit the next transaction with the store's ``synchronous``, or without an fsync."""
        level = self._synchronous if durable else "NORMAL"
        if level != self._level and not self._fsyncs:
            conn.execute(f"PRAGMA synchronous={level}")
        self._level = level

    async def _off_loop(self, fn: Callable[[sqlite3.Connection], T], conn: sqlite3.Connection) -> T:
        assert self._loop is not None
        assert self._committer is not None
        return await self._committer.run(functools.partial(fn, conn))

    async def _begin(self, conn: sqlite3.Connection) -> None:
        """``BEGIN IMMEDIATE``; if another process holds the write lock, wait for it off the loop."""
        if not _begun(conn):
            await self._off_loop(_begin_waiting, conn)

    def _quietly(self, conn: sqlite3.Connection, batch: list[_Op]) -> tuple[list[_Outcome], bool]:
        """:meth:`_execute` on the store's thread, for a batch that needs no fsync and whose operations
        touch the connection alone (so no job is handed off: :meth:`_hand_over` has nothing to do)."""
        _begin_blocking(conn)
        try:
            done = self._transaction(conn, batch, isolate=False)
        except _OperationFailed:
            _begin_blocking(conn)
            done = self._transaction(conn, batch, isolate=True)
        self._commit(conn)
        return done

    def _commit(self, conn: sqlite3.Connection) -> None:
        conn.execute("COMMIT")
        self.commits += 1

    async def _commit_durably(self, conn: sqlite3.Connection) -> None:
        """A durable commit (:meth:`_commit_synced`): on the event loop's own thread while durable commits
        are quick (:data:`_COMMIT_HERE_AT_MOST`), the last one is long enough past
        (:data:`_COMMIT_HERE_GAP`) and no other write waits for the writer; otherwise on the store's
        thread, so that a slow disk or a busy relay never holds the loop. Handing a commit to the
        store's thread and back costs wake-ups of both threads and turns of the GIL (at 100 msg/s the
        loop was preempted 4.4 times a message, 0.2 with this)."""
        took = self._commit_took
        if (
            took is not None
            and took <= _COMMIT_HERE_AT_MOST
            and not (self._pending or self._first)
            and time.perf_counter() >= self._commit_here_from
        ):
            seconds = self._commit_timed(conn)
            rest = max(_COMMIT_HERE_GAP, seconds * (1 / _COMMIT_HERE_SHARE - 1))
        else:
            seconds = await self._off_loop(self._commit_timed, conn)
            rest = _COMMIT_HERE_GAP
        self._commit_here_from = time.perf_counter() + rest
        self._commit_took = seconds if took is None else took + (seconds - took) / 8

    def _commit_timed(self, conn: sqlite3.Connection) -> float:
        """:meth:`_commit_synced`; the seconds it took."""
        started = time.perf_counter()
        self._commit_synced(conn)
        return time.perf_counter() - started

    def _commit_synced(self, conn: sqlite3.Connection) -> None:
        """A durable commit (where: :meth:`_commit_durably`): with :attr:`_fsyncs`, the commit's frames are in the WAL
        when ``COMMIT`` returns, and the WAL's fsync puts them (and every commit before) on disk."""
        self._commit(conn)
        if self._fsyncs:
            try:
                self._sync_wal()
            except FileNotFoundError:
                # The files were deleted under the store (:meth:`_files_changed` refuses new work from now
                # on): SQLite writes to the unlinked WAL it holds, which no fsync would make survive.
                pass
            except OSError as exc:  # committed, maybe not on disk: the callers hear of a failed write
                raise sqlite3.OperationalError(f"fsync of the WAL failed: {exc}") from exc

    def _sync_wal(self) -> None:
        """An fsync of the WAL, through the descriptor opened with the store: the file the commits are
        written to, until the connection closes (a file replaced at its path is caught by
        :meth:`_files_changed`). Opening it at each fsync cost two system calls and two more turns of
        the GIL, each a wait behind the loop, a durable commit."""
        if self._wal is not None:
            os.fsync(self._wal)
            return
        fd = os.open(self._watched[1], os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _transaction(self, conn: sqlite3.Connection, batch: list[_Op], *, isolate: bool) -> tuple[list[_Outcome], bool]:
        """Run the batch in the open transaction (the fast path has no savepoints)."""
        outcomes: list[_Outcome] = []
        wake = False
        for operation, future, wakes, *_ in batch:
            if isolate:
                conn.execute("SAVEPOINT op")
            handing = len(self._handing)
            try:
                result = operation(conn)
            except Exception as exc:
                if not isolate:
                    conn.execute("ROLLBACK")
                    raise _OperationFailed from exc
                conn.execute("ROLLBACK TO op")
                conn.execute("RELEASE op")
                self._hand_over(committed=False, since=handing)
                outcomes.append((future, None, exc))
                continue
            if isolate:
                conn.execute("RELEASE op")
            outcomes.append((future, result, None))
            # An enqueue whose job was handed off made nothing claimable: no worker need look.
            wake = wake or (wakes and len(self._handing) == handing)
        return outcomes, wake

    def _all_failed(self, conn: sqlite3.Connection, batch: list[_Op], exc: sqlite3.Error) -> list[_Outcome]:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        error = StoreError(f"SQLite store {self.path}: commit failed: {exc}")
        return [(future, None, error) for _, future, *_ in batch]

    def _deliver(self, outcomes: list[_Outcome], wake: bool) -> None:
        for future, result, error in outcomes:
            _settle(future, result, error)
        self._hand_over(committed=True)  # after the acks: the jobs that were handed off start
        if wake:
            self._wake.set()

    async def _call(
        self,
        operation: Callable[[sqlite3.Connection], T],
        *,
        wakes: bool = False,
        durable: bool = True,
        first: bool = False,
        alone: bool = False,
    ) -> T:
        return await self._submit(operation, wakes=wakes, durable=durable, first=first, alone=alone)

    def _submit(
        self,
        operation: Callable[[sqlite3.Connection], T],
        *,
        wakes: bool = False,
        durable: bool = True,
        first: bool = False,
        alone: bool = False,
    ) -> asyncio.Future[T]:
        """Hand ``operation`` to the writer; the future resolves after its batch's commit. An operation
        ``first`` (an enqueue: it depends on no write before it) commits ahead of those queued before it;
        one that touches the connection ``alone`` may run on the store's thread (:meth:`_execute`)."""
        if self._writer is None or self._loop is None:
            raise StoreError(f"SQLite store {self.path} is not open")
        future: asyncio.Future[T] = self._loop.create_future()
        if first:
            self._first.append((operation, future, wakes, durable, False))
        else:
            self._hand_over_soon()  # the finishes accepted before this operation commit before it
            self._pending.append((operation, future, wakes, durable, alone))
        self._more.set()
        return future

    def _hand_over_soon(self) -> None:
        """Give the writer the finishes accepted so far, as one operation."""
        if self._soon_timer is not None:
            self._soon_timer.cancel()
            self._soon_timer = None
        if self._soon and self._loop is not None:
            soon, self._soon = self._soon, []
            together: asyncio.Future[list[Exception | None]] = self._loop.create_future()
            together.add_done_callback(functools.partial(_fan_out, [future for _, future in soon]))
            write = _FinishedTogether([finish for finish, _ in soon])
            self._pending.append((write, together, False, False, True))
            self._more.set()

    def _read_only(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA query_only=1")
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        return conn

    def _read(self, query: Callable[[sqlite3.Connection], T]) -> T:
        if self._reader is None:
            raise StoreError(f"SQLite store {self.path} is not open")
        try:
            return query(self._reader)
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite store {self.path}: read failed: {exc}") from exc

    async def _scan(self, query: Callable[[sqlite3.Connection], T]) -> T:
        """A read whose cost grows with the data (the queue's counts, for ``/healthz`` and the metrics:
        56 ms with a million jobs queued): on a worker thread and a connection of its own, one at a
        time, so that the loop (acks, lookups) does not wait for it."""
        async with self._scanning:
            if self._scanner is None:
                raise StoreError(f"SQLite store {self.path} is not open")
            try:
                return await anyio.to_thread.run_sync(query, self._scanner)
            except sqlite3.Error as exc:
                raise StoreError(f"SQLite store {self.path}: read failed: {exc}") from exc

    # -- lifecycle -----------------------------------------------------------------------
    def _own(self) -> None:
        """Hold ``<file>.lock`` for as long as this connector runs: one connector per SQLite file.

        A second connector would queue again the jobs the first is running (and send them twice), and
        both would claim from one queue; commands that run beside the connector do not take it.
        The kernel releases the lock with the process, ``kill -9`` included.
        """
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        lock = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        os.fchmod(lock, 0o600)  # whatever the umask
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(lock, 32).decode(errors="replace").strip() or "unknown"
            os.close(lock)
            raise StoreError(
                f"SQLite store {self.path} is in use by another connector (pid {holder}): one connector per "
                "SQLite file; run several processes on PostgreSQL ([store] url)"
            ) from None
        os.ftruncate(lock, 0)
        os.pwrite(lock, str(os.getpid()).encode(), 0)
        self._owner = lock

    def _disown(self) -> None:
        lock, self._owner = self._owner, None
        if lock is not None:
            os.close(lock)  # releases the lock

    async def open(self, *, recover: bool = True) -> None:
        if self._writer is not None:
            return
        if recover:
            self._own()
        try:
            await self._open(recover)
        except BaseException:
            self._disown()
            raise

    async def _open(self, recover: bool) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            conn = await anyio.to_thread.run_sync(self._connect)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open SQLite store at {self.path}: {exc}") from exc
        self._committer = _Committer()
        self._closing = False
        self._writer = self._loop.create_task(self._write(conn))

        def migrate(c: sqlite3.Connection) -> int:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    c.execute(statement)
            row = c.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            # A new file is at _SCHEMA's version, as is an older one now (its statements only add tables).
            version = max(int(row[0]), _SCHEMA_VERSION) if row else _SCHEMA_VERSION
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"SQLite store {self.path} has schema version {version}, newer than this amoconnect "
                    f"({SCHEMA_VERSION}); upgrade amoconnect"
                )
            for script in MIGRATIONS[version - _SCHEMA_VERSION :]:
                for statement in _statements(script):
                    c.execute(statement)
            c.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            if not recover:  # beside a running connector, whose jobs these are
                return 0
            # A crash left these mid-flight: run them again (the send may have happened: at-least-once).
            return c.execute("UPDATE queue SET state = 'queued' WHERE state = 'running'").rowcount

        self.recovered = await self._call(migrate, wakes=True)
        self._files, self._lost = self._file_ids(), None  # the WAL exists from the first write on
        with contextlib.suppress(OSError):  # always there in WAL mode unless locking_mode=EXCLUSIVE (not used)
            self._shm = os.open(f"{self.where}-shm", os.O_RDONLY)
        with contextlib.suppress(OSError):  # there from the first write on; else opened at each fsync
            self._wal = os.open(self._watched[1], os.O_RDONLY)
        # Reads run at once on the caller's thread on a second connection: WAL lets them see every
        # committed write without waiting behind the writer's batch (an indexed lookup takes microseconds).
        # Reads that scan run on a worker thread, on a third (_scan).
        self._reader, self._scanner = self._read_only(), self._read_only()

    async def close(self) -> None:
        writer, self._writer = self._writer, None
        if writer is None:
            return
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        self._hand_over_soon()
        self._closing = True
        self._more.set()
        try:
            await writer  # what was submitted before the close still commits
        finally:
            self._disown()
        assert self._committer is not None
        self._committer.shutdown(wait=False)
        for fd in (self._shm, self._wal):
            if fd is not None:
                os.close(fd)
        self._shm = self._wal = None
        with anyio.CancelScope(shield=True):
            async with self._scanning:  # a scan under way finishes first (a few ms)
                scanner, self._scanner = self._scanner, None
                if scanner is not None:
                    scanner.close()

    async def migrate(self) -> list[int]:
        """SQLite migrates itself on open: open and close; nothing is applied here."""
        await self.open(recover=False)
        await self.close()
        return []

    async def __aenter__(self) -> SQLiteStore:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- queue ---------------------------------------------------------------------------
    async def enqueue(self, jobs: Sequence[NewJob], *, dedup: Sequence[str] = ()) -> bool:
        keys = tuple(dict.fromkeys(dedup))

        def run(conn: sqlite3.Connection) -> bool:
            self._refuse_if_lost()
            now = self._now()
            if len(keys) == 1:  # seen before, or marked seen now: one look in the b-tree
                if conn.execute(_MARK_SEEN, (keys[0], now)).rowcount == 0:
                    return False
            elif keys:
                seen_sql = f"SELECT 1 FROM dedup WHERE key IN ({', '.join('?' * len(keys))}) LIMIT 1"
                if conn.execute(seen_sql, keys).fetchone() is not None:
                    return False
                conn.executemany("INSERT INTO dedup VALUES (?, ?)", [(key, now) for key in keys])
            if len(jobs) == 1 and self._taker is not None and jobs[0].delay <= 0:
                self._hand_off(self._taker, conn, jobs[0], _insert_job(conn, jobs[0], now), now)
            else:
                _insert_jobs(conn, jobs, now)
            crash_point("store.enqueue")
            return True

        return await self._call(run, wakes=True, first=True)

    def hand_off_to(self, taker: Taker | None) -> None:
        self._taker = taker

    def _hand_off(self, taker: Taker, conn: sqlite3.Connection, job: NewJob, job_id: int, now: float) -> None:
        """Mark ``job``, just enqueued as ``job_id``, running for ``taker`` if it is the first a claim would
        take now (its conversation has no other job, and no other conversation's job is due before it)."""
        first = conn.execute(_ANY_DUE, (now,)).fetchone()
        if first is None or first[0] != job_id or not taker.offer():
            return
        try:
            conn.execute(_RUNNING, (job_id,))
        except BaseException:
            taker.handed(None)
            raise
        self._handing.append((taker, Job(job_id, job.kind, job.key, job.payload, job.scope_id, 1, now)))

    def _hand_over(self, *, committed: bool, since: int = 0) -> None:
        """The jobs handed off since index ``since`` of the transaction's list: to their taker once
        committed, otherwise their reserved slots back."""
        handing = self._handing[since:]
        del self._handing[since:]
        for taker, job in handing:
            taker.handed(job if committed else None)

    async def claim(self, limit: int) -> list[Job]:
        if not self._abandoned and self._read(lambda conn: conn.execute(_ANY_DUE, (self._now(),)).fetchone()) is None:
            return []
        back, self._abandoned = self._abandoned, []

        def run(conn: sqlite3.Connection) -> list[Job]:
            if back:
                requeue = "UPDATE queue SET state = 'queued' WHERE id = ? AND state = 'running'"
                conn.executemany(requeue, [(i,) for i in back])
            return _take(conn, conn.execute(_CLAIM, (self._now(), limit)).fetchall())

        try:
            return await self._call(run, durable=False)
        except StoreError:
            self._abandoned.extend(back)  # still running: queue them with a claim that commits
            raise

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
        def run(conn: sqlite3.Connection) -> tuple[Job | None, bool]:
            key = _finished(conn, Finish(job_id, conversations, messages, activity))
            now = self._now()
            _insert_jobs(conn, then, now)
            if key is None:
                return None, True
            head = conn.execute(_HEAD_OF_KEY, (key,)).fetchone()
            if head is None:
                return None, False
            head_id, busy, next_run = head
            if take_next and not busy and next_run <= now:  # what a claim of the key would take now
                taken = _take(conn, conn.execute(_TAKE_ID, (head_id,)).fetchall())
                return taken[0], False
            return None, True

        try:
            taken, more = await self._call(run, wakes=bool(then), durable=durable or bool(then))
        finally:
            if conversations:
                self.unwritten.forget(conversations)
        if more:
            self._wake.set()  # the conversation's next job is the claims' now
        # Its next job taken, or none left: nothing new to claim, the workers need not look.
        return taken

    def finish_soon(
        self,
        job_id: int,
        *,
        conversations: Sequence[ConversationRecord] = (),
        messages: Sequence[MessageRecord] = (),
        activity: Sequence[Activity] = (),
    ) -> asyncio.Future[None]:
        if self._writer is None or self._loop is None:
            raise StoreError(f"SQLite store {self.path} is not open")
        future: asyncio.Future[None] = self._loop.create_future()
        # Grouped: the writer gets them once SOON_GROUP are waiting, SOON_LINGER seconds after the first,
        # or with the next other operation but an enqueue, whichever comes first.
        self._soon.append((Finish(job_id, tuple(conversations), tuple(messages), tuple(activity)), future))
        if len(self._soon) >= SOON_GROUP:
            self._hand_over_soon()
        elif self._soon_timer is None:
            self._soon_timer = self._loop.call_later(SOON_LINGER, self._hand_over_soon)
        held = self.unwritten.add(conversations, messages)
        future.add_done_callback(lambda f: self._soon_settled(f, held))
        return future

    def _soon_settled(self, future: asyncio.Future[None], held: object) -> None:
        """A finish accepted without waiting committed (its records are stored) or failed."""
        if not future.cancelled() and future.exception() is None:
            self.unwritten.committed(held)
        else:
            self.unwritten.drop(held)

    async def take_ahead(self, job: Job, limit: int) -> list[Job]:
        def run(conn: sqlite3.Connection) -> list[Job]:
            params = (job.kind, self._now(), job.key, job.id, limit, job.key, job.id, job.key)
            return _take(conn, conn.execute(_AHEAD, params).fetchall())

        return await self._call(run, durable=False, alone=True)

    async def release(self, job_ids: Sequence[int]) -> None:
        def run(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "UPDATE queue SET state = 'queued', attempts = attempts - 1 WHERE id = ? AND state = 'running'",
                [(i,) for i in job_ids],
            )

        if job_ids:
            await self._call(run, wakes=True)

    async def flush(self, *, linger: float = 0.0) -> None:
        """An fsync of the WAL on the store's thread (after the synced commits before it), unless a synced
        commit (an enqueue's) made within ``linger`` seconds did it. What a commit wrote is in the WAL,
        or in the database file once a checkpoint copied it (a checkpoint syncs the WAL first)."""
        target = self._disk.unsynced
        if await self._disk.covered_within(target, linger):
            return

        def sync() -> None:
            self._sync_wal()
            self._flushes += 1

        try:
            assert self._committer is not None
            await self._committer.run(sync)
        except OSError as exc:
            raise StoreError(f"SQLite store {self.path}: flush failed: {exc}") from exc
        self._disk.covered(target)

    async def retry(self, job_id: int, *, delay: float, error: str) -> None:
        def run(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE queue SET state = 'queued', next_run = ?, last_error = ? WHERE id = ?",
                (self._now() + delay, error, job_id),
            )

        await self._call(run, wakes=True)

    async def bury(self, job_id: int, *, error: str, then: Sequence[NewJob] = ()) -> None:
        def run(conn: sqlite3.Connection) -> None:
            now = self._now()
            _bury(conn, "id = ?", (job_id,), error=error, now=now)
            _insert_jobs(conn, then, now)

        await self._call(run, wakes=True)

    async def bury_jobs_of(self, scope_id: str, error: str) -> int:
        def run(conn: sqlite3.Connection) -> int:
            return _bury(conn, "scope_id = ? AND state = 'queued'", (scope_id,), error=error, now=self._now())

        return await self._call(run)

    def abandon(self, job_id: int) -> None:
        """Queue the job again with the next claim (one that commits: the store serves again)."""
        self._abandoned.append(job_id)
        self._wake.set()

    async def next_due_in(self) -> float | None:
        def run(conn: sqlite3.Connection) -> float | None:
            row = conn.execute(NEXT_DUE).fetchone()
            return None if row[0] is None else max(row[0] - self._now(), 0.0)

        return self._read(run)

    async def wait_for_work(self, max_wait: float) -> None:
        with anyio.move_on_after(max_wait):
            await self._wake.wait()
        self._wake.clear()

    async def dead_letters(self, limit: int = 100, *, scope_id: str | None = None) -> list[DeadLetter]:
        where, params = _id_filter(None, scope_id)

        def run(conn: sqlite3.Connection) -> list[DeadLetter]:
            rows = conn.execute(
                "SELECT id, kind, key, payload, scope_id, attempts, created_at, failed_at, error FROM dead "
                f"{where} ORDER BY id LIMIT ?",
                (*params, limit),
            ).fetchall()
            return [DeadLetter(*r) for r in rows]

        return self._read(run)

    async def requeue(self, ids: Sequence[int] | None = None, *, scope_id: str | None = None) -> int:
        def run(conn: sqlite3.Connection) -> int:
            where, params = _id_filter(ids, scope_id)
            now = self._now()
            conn.execute(
                "INSERT INTO queue (id, kind, key, payload, scope_id, attempts, next_run, created_at, last_error) "
                f"SELECT id, kind, key, CASE WHEN length(payload) > {_SPILL_ABOVE} THEN x'' ELSE payload END, "
                f"scope_id, 0, ?, created_at, error FROM dead {where}",
                (now, *params),
            )
            conn.execute(
                f"INSERT INTO payloads SELECT id, payload FROM dead {where} "
                f"{'AND' if where else 'WHERE'} length(payload) > {_SPILL_ABOVE}",
                params,
            )
            return conn.execute(f"DELETE FROM dead {where}", params).rowcount

        return await self._call(run, wakes=True)

    async def purge(self, ids: Sequence[int] | None = None, *, scope_id: str | None = None) -> int:
        def run(conn: sqlite3.Connection) -> int:
            where, params = _id_filter(ids, scope_id)
            return conn.execute(f"DELETE FROM dead {where}", params).rowcount

        return await self._call(run)

    async def counts(self) -> dict[str, int]:
        def run(conn: sqlite3.Connection) -> dict[str, int]:
            (jobs,) = conn.execute("SELECT COUNT(*) FROM queue").fetchone()
            (running,) = conn.execute("SELECT COUNT(*) FROM queue WHERE state = 'running'").fetchone()
            counts = {"queued": jobs - running, "running": running}
            counts["dead"] = conn.execute("SELECT COUNT(*) FROM dead").fetchone()[0]
            return counts

        return await self._scan(run)

    async def probe(self) -> None:
        def run(conn: sqlite3.Connection) -> None:
            self._refuse_if_lost()
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('probe', '')")

        await self._call(run)

    async def prune(self, *, dedup_older_than: float) -> dict[str, int]:
        """Delete what aged out :data:`_PRUNE_CHUNK` rows a transaction (an hour's dedup keys at 100
        webhooks/s are 360,000: deleted at once, they held the writer, and the loop, for a third of a
        second), unsynced: a prune undone by a power cut runs again."""
        now = self._now()
        return {
            "dedup keys": await self._delete_aged("dedup", "seen_at", now - dedup_older_than),
            "button data": await self._delete_aged("button_data", "expires_at", now),
        }

    async def _delete_aged(self, table: str, column: str, cutoff: float) -> int:
        """Delete the rows of ``table`` (keyed by ``key``) whose ``column`` is before ``cutoff``, in chunks."""
        sql = f"DELETE FROM {table} WHERE key IN (SELECT key FROM {table} WHERE {column} < ? LIMIT ?)"

        def run(conn: sqlite3.Connection) -> int:
            return int(conn.execute(sql, (cutoff, _PRUNE_CHUNK)).rowcount)

        total = 0
        while True:
            deleted = await self._call(run, durable=False, alone=True)
            total += deleted
            if deleted < _PRUNE_CHUNK:
                return total

    # -- mapping -------------------------------------------------------------------------
    async def _one(self, sql: str, params: tuple[Any, ...]) -> tuple[Any, ...] | None:
        def run(conn: sqlite3.Connection) -> tuple[Any, ...] | None:
            row: tuple[Any, ...] | None = conn.execute(sql, params).fetchone()
            return row

        return self._read(run)

    async def put_conversation(self, record: ConversationRecord) -> None:
        try:
            await self._call(lambda conn: _upsert_conversations(conn, [record], merge=False))
        finally:
            self.unwritten.forget([record])

    async def put_message(self, record: MessageRecord) -> None:
        await self._call(lambda conn: _upsert_messages(conn, [record]))

    # -- activity ------------------------------------------------------------------------
    async def recent_conversations(self, scope_id: str, limit: int = 50) -> list[RecentConversation]:
        rows = self._read(lambda conn: conn.execute(_RECENT, (scope_id, limit)).fetchall())
        return [recent_row(row) for row in rows]

    async def source_activity(self, scope_id: str) -> list[SourceActivity]:
        rows = self._read(lambda conn: conn.execute(_SOURCE_ACTIVITY, (scope_id,)).fetchall())
        return [activity_row(row) for row in rows]

    # -- leases --------------------------------------------------------------------------
    async def hold_lease(self, name: str, seconds: float) -> bool:
        # One process owns the file, so every lease is this process's.
        return True

    async def release_lease(self, name: str) -> None:
        return

    # -- adapter state -------------------------------------------------------------------
    async def set_state(self, namespace: str, key: str, value: bytes) -> None:
        await self._call(
            lambda conn: conn.execute("INSERT OR REPLACE INTO state VALUES (?, ?, ?)", (namespace, key, value))
        )

    async def delete_state(self, namespace: str, key: str) -> None:
        await self._call(
            lambda conn: conn.execute("DELETE FROM state WHERE namespace = ? AND key = ?", (namespace, key))
        )

    # -- button data ---------------------------------------------------------------------
    async def put_button_data(self, key: str, value: str, keep_for: float) -> None:
        await self._call(
            lambda conn: conn.execute(
                "INSERT INTO button_data VALUES (?, ?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at",
                (key, value, self._now() + keep_for),
            )
        )

    async def button_data(self, key: str) -> str | None:
        row = await self._one("SELECT value FROM button_data WHERE key = ? AND expires_at >= ?", (key, self._now()))
        return None if row is None else str(row[0])

    # -- rate limits ---------------------------------------------------------------------
    def limiter(self, name: str, rate: float, per: float = 1.0, burst: int | None = None) -> RateLimiter:
        """The in-process limiter called ``name``: one process owns the file, so its limits are the whole story."""
        return self._limiters(name, rate, per, burst)


class _Committer(concurrent.futures.Executor):
    """The store's thread: runs what must not block the loop (a COMMIT and its fsync, a wait for
    another process's lock) one call at a time, in order.

    :meth:`run` hands it a call and has the loop woken with the outcome: one future and one wake-up
    of the loop per call, where ``run_in_executor`` chains two futures through a condition variable
    (measured: 20 µs of CPU per round trip instead of 45, two or three of them per message at low
    rates). It is an ``Executor`` too, for ``run_in_executor``.
    """

    def __init__(self) -> None:
        self._calls: queue.SimpleQueue[tuple[Callable[[], Any], Callable[[Any, BaseException | None], None]] | None]
        self._calls = queue.SimpleQueue()
        # A daemon: a process that exits without closing the store must not hang on it (a COMMIT cut
        # short is undone by SQLite, as after a crash).
        self._thread = threading.Thread(target=self._work, name="amoconnect-sqlite", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while (item := self._calls.get()) is not None:
            call, done = item
            try:
                result = call()
            except BaseException as exc:  # handed to the caller, whatever it is
                done(None, exc)
            else:
                done(result, None)

    async def run(self, call: Callable[[], T]) -> T:
        """``call()`` on the store's thread; its result or its exception."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()

        def done(result: Any, error: BaseException | None) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits
                loop.call_soon_threadsafe(_settle, future, result, error)

        self._calls.put((call, done))
        return await future

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        future.set_running_or_notify_cancel()

        def done(result: Any, error: BaseException | None) -> None:
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(error)

        self._calls.put((functools.partial(fn, *args, **kwargs), done))
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop the thread after the calls handed to it so far."""
        self._calls.put(None)
        if wait:
            self._thread.join()


def _checkpoint_passive(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


def _begun(conn: sqlite3.Connection) -> bool:
    """``BEGIN IMMEDIATE`` at once; False (nothing begun) while another process holds the write lock."""
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY:
            raise
        return False
    return True


def _begin_blocking(conn: sqlite3.Connection) -> None:
    """``BEGIN IMMEDIATE`` on the store's thread, waiting for another process's lock if need be."""
    if not _begun(conn):
        _begin_waiting(conn)


def _begin_waiting(conn: sqlite3.Connection) -> None:
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    try:
        conn.execute("BEGIN IMMEDIATE")
    finally:
        conn.execute("PRAGMA busy_timeout=0")


class _OperationFailed(Exception):
    """An operation of a batch failed on the fast path; the batch is run again with savepoints."""


def _statements(script: str) -> list[str]:
    """The statements of ``script`` (a trigger's body holds semicolons of its own)."""
    statements, current = [], ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    return statements


def _id_filter(ids: Sequence[int] | None, scope_id: str | None = None) -> tuple[str, tuple[object, ...]]:
    """The ``WHERE`` of dead letters with these ``ids`` (all: None) of ``scope_id`` (any: None)."""
    clauses: list[str] = []
    params: tuple[object, ...] = ()
    if ids is not None:
        ids = tuple(ids)
        clauses.append(f"id IN ({', '.join('?' * len(ids))})" if ids else "0")
        params = ids
    if scope_id is not None:
        clauses.append("scope_id = ?")
        params = (*params, scope_id)
    return (f"WHERE {' AND '.join(clauses)}" if clauses else ""), params
