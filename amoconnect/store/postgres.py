"""The shared store: PostgreSQL, for any number of ``amoconnect run`` processes on any number of machines.

The same :class:`~amoconnect.store.base.Store` as SQLite, on one database that every process
uses at once:

- Jobs are claimed with ``FOR UPDATE SKIP LOCKED``: processes never wait for each other's rows.
- Order per conversation holds across processes: a job is claimed only while no earlier job of
  its key exists, so a key's running job is its lock. The lock is a **lease**: the owner extends
  it while it works, and when a process dies its running jobs become claimable again once the
  lease expires (``lease`` seconds); so does a job whose outcome the owner gave up recording
  (:meth:`PostgresStore.abandon`). Only the job's holder may finish, retry or bury it: a
  process that stalled past its lease finds its job taken over, and what it did is dropped
  (the new holder runs the job again), so the conversation's next job cannot start early.
- ``LISTEN/NOTIFY`` wakes idle workers of every process when a job is committed; no polling. The
  NOTIFY follows the commit in a transaction of its own, one at a time however many commits ask:
  a NOTIFY inside a transaction holds the server's lock on its notification queue through the
  commit, so every notifying commit would wait for the one before it to reach the disk (ingest
  at one fsync a webhook, no group commit). A process that dies between the two leaves the
  others to find the work at their next look (within 5 s). Its payload is the sending process's
  :attr:`PostgresStore.owner`: that process's own commits woke its workers already, and its
  listener lets its own notifications go by (each would cost a claim and a look for nothing).
- Dedup keys and the id mapping sit under UNIQUE constraints.
- Rate limits hold for the whole fleet: :meth:`PostgresStore.limiter` keeps their state in a
  table (:mod:`.pglimits`).
- The schema is versioned (:data:`MIGRATIONS`); ``amoconnect migrate`` applies it and
  :meth:`PostgresStore.open` refuses a database whose version is not this code's.

Times are the database's clock, so the processes' clocks need not agree.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
import psycopg
import psycopg_pool
import structlog
from psycopg.rows import TupleRow

from ..crashpoints import crash_point
from ..errors import StoreError
from ..ratelimit import Limiter, Rate
from .base import (
    PREVIEW_CHARS,
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
from .pglimits import PostgresLimiter
from .pgregistry import PostgresRegistryRows
from .registry import ACCOUNT_IDS, ACCOUNT_STATE_REASONS, registry_schema
from .sql import (
    ACTIVITY_SCHEMA,
    AHEAD_OF_KEY,
    CLAIMABLE,
    CONVERSATION_COLUMNS,
    HEAD_CLAIMED,
    HEADS_TABLE,
    MESSAGE_COLUMNS,
    NEXT_DUE,
    NEXT_OF_KEY,
    Finish,
    MappingLookups,
    activity_params,
    activity_reads,
    activity_row,
    activity_write,
    conversation,
    conversation_params,
    conversation_writes,
    grouped,
    head_added,
    head_claimed,
    head_refreshed,
    message_params,
    recent_row,
)
from .sql import (
    PG_NOW as _NOW,
)
from .unwritten import SOON_GROUP, SOON_LINGER, Read, Unwritten

__all__ = ["MIGRATIONS", "PostgresStore"]

log = structlog.get_logger("amoconnect.store")

_CHANNEL = "amoconnect_jobs"
"""Where a commit of new work is announced; the payload is the announcing process's ``owner``."""


MIGRATIONS: tuple[str, ...] = (
    # 1: queue, dead letters, dedup, mapping, adapter state, finished jobs, media, leases
    """
    CREATE TABLE queue (
        id BIGSERIAL PRIMARY KEY,
        kind TEXT NOT NULL,
        key TEXT NOT NULL,
        payload BYTEA NOT NULL,
        scope_id TEXT NOT NULL,
        state TEXT NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'running')),
        attempts INTEGER NOT NULL DEFAULT 0,
        next_run DOUBLE PRECISION NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        last_error TEXT,
        owner TEXT,
        lease_until DOUBLE PRECISION
    );
    CREATE INDEX queue_due ON queue (next_run, id) WHERE state = 'queued';
    CREATE INDEX queue_key ON queue (key, id);
    CREATE INDEX queue_lease ON queue (lease_until) WHERE state = 'running';
    CREATE TABLE dead (
        id BIGINT PRIMARY KEY,
        kind TEXT NOT NULL,
        key TEXT NOT NULL,
        payload BYTEA NOT NULL,
        scope_id TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        failed_at DOUBLE PRECISION NOT NULL,
        error TEXT NOT NULL
    );
    CREATE TABLE dedup (key TEXT PRIMARY KEY, seen_at DOUBLE PRECISION NOT NULL);
    CREATE INDEX dedup_seen ON dedup (seen_at);
    CREATE TABLE conversations (
        scope_id TEXT NOT NULL,
        conversation_id TEXT NOT NULL,
        instance TEXT NOT NULL,
        chat TEXT NOT NULL,
        amocrm_chat_id TEXT,
        client_id TEXT,
        last_client_at DOUBLE PRECISION,
        ref_pending BOOLEAN NOT NULL DEFAULT FALSE,
        PRIMARY KEY (scope_id, conversation_id),
        UNIQUE (instance, chat)
    );
    CREATE INDEX conversations_amocrm ON conversations (scope_id, amocrm_chat_id);
    CREATE TABLE messages (
        scope_id TEXT NOT NULL,
        msgid TEXT NOT NULL,
        conversation_id TEXT NOT NULL,
        direction TEXT NOT NULL CHECK (direction IN ('in', 'out')),
        amocrm_id TEXT,
        messenger_id TEXT,
        status INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (scope_id, msgid)
    );
    CREATE INDEX messages_amocrm ON messages (scope_id, amocrm_id);
    CREATE INDEX messages_messenger ON messages (scope_id, conversation_id, messenger_id);
    CREATE TABLE state (
        namespace TEXT NOT NULL,
        key TEXT NOT NULL,
        value BYTEA NOT NULL,
        PRIMARY KEY (namespace, key)
    );
    CREATE TABLE finished (
        id BIGINT PRIMARY KEY,
        kind TEXT NOT NULL,
        key TEXT NOT NULL,
        payload BYTEA NOT NULL,
        scope_id TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        finished_at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX finished_at ON finished (finished_at);
    CREATE TABLE media (
        id TEXT PRIMARY KEY,
        content_type TEXT NOT NULL,
        file_name TEXT NOT NULL,
        content BYTEA NOT NULL,
        stored_at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX media_stored ON media (stored_at);
    CREATE TABLE leases (name TEXT PRIMARY KEY, owner TEXT NOT NULL, until DOUBLE PRECISION NOT NULL);
    """,
    # 2: rate limits shared by the fleet (store/pglimits.py). No index on tat: it changes on every
    # action (updates stay HOT), and the pruning scan only meets keys active in the last moments.
    """
    CREATE TABLE rate_limits (
        name TEXT NOT NULL,
        key TEXT NOT NULL,
        tat DOUBLE PRECISION NOT NULL,
        held_until DOUBLE PRECISION,
        PRIMARY KEY (name, key)
    );
    """,
    # 3: long button data under short keys (amoconnect/buttondata.py), dropped by prune once expired
    """
    CREATE TABLE button_data (key TEXT PRIMARY KEY, value TEXT NOT NULL, expires_at DOUBLE PRECISION NOT NULL);
    CREATE INDEX button_data_expires ON button_data (expires_at);
    """,
    # 4: head records of the queue's keys (store/sql.py), kept by triggers. A refresh first locks
    # the key's head row: it waits for a transaction that changes the key's jobs to commit, and
    # its next statements see what that one wrote (READ COMMITTED: a fresh snapshot each).
    HEADS_TABLE.format(id_type="BIGINT", time_type="DOUBLE PRECISION")
    + """
    CREATE FUNCTION queue_head_refresh(head_key TEXT) RETURNS void LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM 1 FROM heads WHERE key = head_key FOR UPDATE;
        {drop};
        {make};
    END $$;
    CREATE FUNCTION queue_heads() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'INSERT' THEN
            {added};
            RETURN NULL;
        ELSIF TG_OP = 'UPDATE' AND {claim} THEN
            {claimed};
            RETURN NULL;
        END IF;
        PERFORM queue_head_refresh(OLD.key);
        IF TG_OP = 'UPDATE' AND NEW.key <> OLD.key THEN
            PERFORM queue_head_refresh(NEW.key);
        END IF;
        RETURN NULL;
    END $$;
    CREATE TRIGGER queue_added AFTER INSERT ON queue FOR EACH ROW EXECUTE FUNCTION queue_heads();
    CREATE TRIGGER queue_changed AFTER UPDATE OF key, state, next_run ON queue FOR EACH ROW
        WHEN (OLD.key <> NEW.key OR OLD.state <> NEW.state OR OLD.next_run <> NEW.next_run)
        EXECUTE FUNCTION queue_heads();
    CREATE TRIGGER queue_removed AFTER DELETE ON queue FOR EACH ROW EXECUTE FUNCTION queue_heads();
    """.replace("{drop}", head_refreshed("head_key")[0])
    .replace("{make}", head_refreshed("head_key")[1])
    .replace("{added}", head_added("NEW.key", "NEW.id", "NEW.next_run"))
    .replace("{claim}", HEAD_CLAIMED)
    .replace("{claimed}", head_claimed("NEW.key")),
    # 5: accounts and sources (store/registry.py)
    registry_schema(time_type="DOUBLE PRECISION", id_type="BIGINT"),
    # 6: a head refresh plans its lookups for the key it refreshes: PL/pgSQL's cached generic plan
    # for any key scanned the queue once one conversation held most of it (measured: 213 ms a
    # finish with a million jobs queued in one conversation).
    "ALTER FUNCTION queue_head_refresh(TEXT) SET plan_cache_mode = force_custom_plan;",
    # 7: amoCRM's numeric id of an account
    ACCOUNT_IDS.format(id_type="BIGINT"),
    # 8: why an account needs re-authorisation or was disconnected
    ACCOUNT_STATE_REASONS,
    # 9: a conversation's newest message and when its last one went out (store/sql.py)
    ACTIVITY_SCHEMA.format(time_type="DOUBLE PRECISION"),
    # 10: a statement that deletes jobs makes each of their conversations' head records again once,
    # after its last row, in key order (a group of finishes deleted 16 jobs of a conversation and made
    # its head record 16 times over: measured 0.24 -> 0.07 ms of the server's CPU a finish)
    """
    CREATE FUNCTION queue_heads_removed() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        removed_key TEXT;
    BEGIN
        FOR removed_key IN SELECT DISTINCT key FROM removed ORDER BY key LOOP
            PERFORM queue_head_refresh(removed_key);
        END LOOP;
        RETURN NULL;
    END $$;
    DROP TRIGGER queue_removed ON queue;
    CREATE TRIGGER queue_removed AFTER DELETE ON queue REFERENCING OLD TABLE AS removed
        FOR EACH STATEMENT EXECUTE FUNCTION queue_heads_removed();
    """,
    # 11: an account's dead letters found without reading every other account's
    "CREATE INDEX dead_scope ON dead (scope_id, id);",
    # 12: the chat whose conversation a job's handler looks up, read with the job when it is claimed
    "ALTER TABLE queue ADD COLUMN chat_instance TEXT, ADD COLUMN chat TEXT;",
)
"""The schema, one script per version; version N is ``MIGRATIONS[N - 1]``. Never edit a released one."""

SCHEMA_VERSION = len(MIGRATIONS)

_INSERT_JOB = (
    f"INSERT INTO queue (kind, key, payload, scope_id, next_run, created_at, chat_instance, chat) "
    f"VALUES (%s, %s, %s, %s, {_NOW} + %s, {_NOW}, %s, %s)"
)
_ENQUEUED = (
    "SELECT (SELECT count(*) FROM fresh), "
    "(SELECT count(*) FROM (SELECT 1 FROM added LIMIT 1) AS n), "
    "(SELECT pg_notify(%s, %s) WHERE EXISTS (SELECT 1 FROM added)) IS NULL"
)
"""What an enqueue answers (the new dedup keys; whether jobs went in), and its NOTIFY of the other processes
when jobs did, delivered at its commit with no round trip of its own (parameters: the channel, the payload)."""
_ENQUEUE = (
    "WITH fresh AS (INSERT INTO dedup (key, seen_at) "
    f"SELECT k, {_NOW} FROM unnest(%s::text[]) AS k ON CONFLICT DO NOTHING RETURNING 1), "
    "added AS (INSERT INTO queue (kind, key, payload, scope_id, next_run, created_at, chat_instance, chat) "
    f"SELECT kind, key, payload, scope_id, {_NOW} + delay, {_NOW}, chat_instance, chat "
    "FROM unnest(%s::text[], %s::text[], %s::bytea[], %s::text[], %s::float8[], %s::text[], %s::text[]) "
    "AS j(kind, key, payload, scope_id, delay, chat_instance, chat) "
    "WHERE (SELECT count(*) FROM fresh) = %s RETURNING 1) " + _ENQUEUED
)
"""The dedup keys are new and the jobs go in, or no job is written (the caller rolls
the new keys back when only some were new); then :data:`_ENQUEUED` (parameters after the jobs': the
count of keys, the channel, the payload)."""
_ENQUEUE_ONE = (
    "WITH fresh AS (INSERT INTO dedup (key, seen_at) "
    f"SELECT k, {_NOW} FROM (SELECT %s::text AS k) AS d WHERE k IS NOT NULL ON CONFLICT DO NOTHING RETURNING 1), "
    "added AS (INSERT INTO queue (kind, key, payload, scope_id, next_run, created_at, chat_instance, chat) "
    f"SELECT %s::text, %s::text, %s::bytea, %s::text, {_NOW} + %s::float8, {_NOW}, %s::text, %s::text "
    "WHERE (SELECT count(*) FROM fresh) = %s RETURNING 1) " + _ENQUEUED
)
""":data:`_ENQUEUE` for one job and at most one dedup key (an everyday webhook), in scalar parameters:
the dedup key or None, the job's kind, key, payload, scope, delay and chat, the count of keys, the channel and
the payload to notify. psycopg dumps six one-item arrays in Python (measured: 140 more calls an execute)."""
_TAKEN = "id, kind, key, payload, scope_id, attempts, created_at, last_error"
"""The columns of a :class:`~.base.Job`, as a take returns them."""
_JOB_FIELDS = len(_TAKEN.split(", "))
_CONVERSATION_FIELDS = len(CONVERSATION_COLUMNS.split(", "))
"""How many of a take's columns (:data:`_CLAIMED`) are the job's, and then its conversation's."""
_RUNNING = f"UPDATE queue SET state = 'running', attempts = attempts + 1, owner = %s, lease_until = {_NOW} + %s "
"""Marks jobs running, held by a process under a lease (parameters: owner, lease), ``WHERE`` to follow."""
_RUN = f"{_RUNNING}WHERE id = ANY (ARRAY (SELECT id FROM c))"
"""Marks the jobs whose ids ``c`` holds running (parameters: owner, lease)."""
_TAKEN_WITH_CHAT = f"RETURNING {_TAKEN}, chat_instance, chat"
"""What a take returns (``t``), for :data:`_WITH_CONVERSATIONS`: the job's columns and its chat."""
_CLAIMED = [f"t.{column}" for column in _TAKEN.split(", ")] + [f"v.{c}" for c in CONVERSATION_COLUMNS.split(", ")]
_WITH_CONVERSATIONS = "FROM t LEFT JOIN conversations AS v ON v.instance = t.chat_instance AND v.chat = t.chat"
"""The jobs taken (``t``), each with the conversation of its chat (:attr:`~.base.NewJob.chat`), NULLs when
there is none, in the columns of :data:`_CLAIMED`: the handler's lookup of it then reads nothing."""
_NEXT_OF_KEY = (
    f"WITH c AS ({NEXT_OF_KEY.format(key='%s', now=_NOW)} FOR UPDATE SKIP LOCKED), "
    f"t AS ({_RUN} {_TAKEN_WITH_CHAT}) SELECT {', '.join(_CLAIMED)} {_WITH_CONVERSATIONS}"
)
"""Takes the next job of a key (parameters: key, owner, lease), in a finish's transaction: after its writes,
so the conversation comes as the finish left it."""
_DUE_IN = f"SELECT ({NEXT_DUE}) - {_NOW}"
"""Seconds until the next job is due (negative: due already; NULL: none queued)."""
_CLAIM = (
    f"WITH c AS ({CLAIMABLE.format(now=_NOW, limit='%s')} FOR UPDATE SKIP LOCKED), "
    f"t AS ({_RUN} AND set_config('synchronous_commit', 'off', true) = 'off' {_TAKEN_WITH_CHAT}) "
    f"SELECT {', '.join(_CLAIMED)}, NULL {_WITH_CONVERSATIONS} "
    f"UNION ALL SELECT {', '.join(['NULL'] * len(_CLAIMED))}, "
    f"({NEXT_DUE} AND id <> ALL (ARRAY (SELECT id FROM c))) - {_NOW}"
)
"""Takes the due heads no other process is taking (parameters: limit, owner, lease): index lookups in
``heads``, then the jobs by id (a condition on ``state`` too would draw the planner to scan the queued jobs),
with their conversations (:data:`_WITH_CONVERSATIONS`).
Its commit waits for no flush to disk: a claim lost with the server's last moments only leaves jobs
running whose lease runs out, and the next commit that waits writes it down with everything before it.

The same statement answers :data:`_DUE_IN` for the heads it did not take (left out by id: it sees them
as they were before it) in a last row, NULL in the job's columns: one execute, not a pipeline of two
(measured: 784 -> 454 Python calls a claim)."""
_HAS_HEAD = "SELECT EXISTS (SELECT 1 FROM heads WHERE key = %s)"
"""Whether a key has jobs left."""
_AHEAD = (
    f"{_RUNNING}WHERE id IN ({AHEAD_OF_KEY.format(kind='%s', now=_NOW, key='%s', id='%s', limit='%s')}) "
    "AND state = 'queued' "
    "AND EXISTS (SELECT 1 FROM queue WHERE id = %s AND owner = %s) "
    f"RETURNING {_TAKEN}"
)
"""Takes the jobs the holder of a job may take ahead (parameters: owner, lease, kind, key, id, limit, key, id,
key, id, owner): none once its lease ran out and another process took the job over."""
_TAKE_OVER_CHAT, _REPLACE_CONVERSATION, _MERGE_CONVERSATION = conversation_writes("%s")
_ACTIVITY = activity_write("%s")
_RECENT, _SOURCE_ACTIVITY = activity_reads("%s")
_MESSAGE_REPLACED = (
    "ON CONFLICT (scope_id, msgid) DO UPDATE SET conversation_id = EXCLUDED.conversation_id, "
    "direction = EXCLUDED.direction, amocrm_id = EXCLUDED.amocrm_id, messenger_id = EXCLUDED.messenger_id, "
    "status = EXCLUDED.status"
)
_UPSERT_MESSAGE = f"INSERT INTO messages ({MESSAGE_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s) {_MESSAGE_REPLACED}"
_UPSERT_MESSAGES = (
    f"INSERT INTO messages ({MESSAGE_COLUMNS}) SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], "
    f"%s::text[], %s::text[], %s::int[]) {_MESSAGE_REPLACED}"
)
"""Several messages in one statement (one row per msgid: a statement cannot upsert a row twice)."""
_ACTIVITIES = (
    "UPDATE conversations AS c SET last_msgid = v.msgid, last_direction = v.direction, last_preview = v.preview, "
    "last_at = v.at, last_out_at = CASE WHEN v.out_at IS NOT NULL AND (c.last_at IS NULL OR c.last_at <= v.out_at) "
    "THEN v.out_at ELSE c.last_out_at END "
    "FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::float8[], %s::float8[]) "
    "AS v(scope_id, conversation_id, msgid, direction, preview, at, out_at) "
    "WHERE c.scope_id = v.scope_id AND c.conversation_id = v.conversation_id "
    "AND (c.last_at IS NULL OR c.last_at <= v.at)"
)
"""Several conversations' newest messages in one statement: per conversation the activity that a
sequence of :data:`_ACTIVITY` updates would leave, and when the last of them that goes out would have
set ``last_out_at`` (:func:`~.sql.grouped`)."""
# finish and bury take the job out of the queue only while this process holds it (its lease did
# not run out and pass it to another process). They run in one script (_Script), so nothing can be
# read back before the commit: when the job is not held, the statement fails on purpose (a cast of
# _NOT_HELD to an integer) and the transaction with the job's writes and follow-ups rolls back.
_NOT_HELD = "amoconnect: the job is no longer held by this process"
_DONE = (
    "done AS (DELETE FROM queue WHERE id = %s AND owner = %s "
    "RETURNING id, kind, key, payload, scope_id, attempts, created_at)"
)
_UNLESS_HELD = f"SELECT ('{_NOT_HELD}: ' || n)::int FROM (SELECT count(*) AS n FROM done) AS held WHERE n = 0"
_ALL_DONE = (
    "done AS (DELETE FROM queue WHERE id = ANY (%s) AND owner = %s "
    "RETURNING id, kind, key, payload, scope_id, attempts, created_at)"
)
_UNLESS_ALL_HELD = f"SELECT ('{_NOT_HELD}: ' || n)::int FROM (SELECT count(*) AS n FROM done) AS held WHERE n < %s"
"""Finishes take their jobs out of the queue together, and fail together unless this process holds every one."""
_BURY = (
    f"WITH {_DONE}, buried AS (INSERT INTO dead SELECT *, {_NOW}, %s FROM done "
    "ON CONFLICT (id) DO UPDATE SET attempts = EXCLUDED.attempts, failed_at = EXCLUDED.failed_at, "
    f"error = EXCLUDED.error) {_UNLESS_HELD}"
)
_UNSYNCED = "SELECT set_config('synchronous_commit', 'off', true)"
"""In a transaction: its commit returns before the WAL is flushed to disk (visible to all at once)."""
_SYNCED_WRITE = (
    "INSERT INTO state VALUES ('amoconnect', 'flush', '') ON CONFLICT (namespace, key) DO UPDATE SET value = ''"
)
"""A write whose synchronous commit waits for the WAL's flush (a transaction that wrote nothing would not)."""
# Serialises `migrate` runs of several processes (an arbitrary, fixed advisory lock key).
_MIGRATE_LOCK = 0x616D6F63

Conn = psycopg.AsyncConnection[TupleRow]


_DEADLOCK_ATTEMPTS = 4
_T = TypeVar("_T")


async def _again_after_deadlock(action: str, write: Callable[[], Awaitable[_T]]) -> _T:
    """Runs a write transaction again when PostgreSQL aborted it as a deadlock, up to
    ``_DEADLOCK_ATTEMPTS`` times in all. Two transactions that write jobs into the same
    conversations in opposite orders (a finish's follow-up into B while another's goes into A) wait
    on each other's head rows; the server aborts one, which wrote nothing, so running it again is safe."""
    for attempt in range(1, _DEADLOCK_ATTEMPTS + 1):
        try:
            return await write()
        except StoreError as exc:
            if attempt == _DEADLOCK_ATTEMPTS or not isinstance(exc.__cause__, psycopg.errors.DeadlockDetected):
                raise
            log.info("deadlock: the transaction runs again", action=action, attempt=attempt)
            await anyio.sleep(secrets.randbelow(10 * attempt) / 1000)
    raise AssertionError("unreachable")


_LOCK_HEADS = "SELECT 1 FROM heads WHERE key = ANY (%s) ORDER BY key FOR UPDATE"
"""Locks the existing head rows of a transaction's conversations in one order, before its writes lock
them one by one (a finish's own conversation first, then its follow-ups'): two such transactions
never deadlock over them. A head row made meanwhile can still close a cycle: the server aborts one
transaction, which runs again (:func:`_again_after_deadlock`)."""


class _Script:
    """Statements sent as one simple query, their parameters bound by psycopg on the client
    (``ClientCursor``). The server runs such a query as one transaction (the pool's connections are in
    autocommit): a statement that fails rolls back those before it and skips those after it, and
    ``set_config(..., true)`` lasts until its end. One execute and one round trip, where a pipeline
    costs psycopg ~75 Python calls a statement and ~250 more for the pipeline itself (measured: seven
    statements, 908 calls in a pipeline, 280 in a script).

    A statement of ``prepared`` (its text: the name each pooled connection prepared it under, see
    :func:`_prepare`) is sent as ``EXECUTE name(...)``: the server plans it once a connection, not at
    every script (measured in a one-chat drain: +0.25 ms of the server's CPU a finish otherwise).
    Statements are written for parameters (``%s``; a literal ``%`` is ``%%``) even without any."""

    def __init__(self, prepared: Mapping[str, str]) -> None:
        self._prepared = prepared
        self._statements: list[str] = []
        self._params: list[Any] = []

    def add(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Add a statement; its place among the results of :meth:`run`."""
        name = self._prepared.get(sql)
        if name is not None:
            sql = f"EXECUTE {name}({', '.join(['%s'] * len(params))})" if params else f"EXECUTE {name}"
        self._statements.append(sql)
        self._params.extend(params)
        return len(self._statements) - 1

    async def run(self, conn: Conn) -> list[list[tuple[Any, ...]]]:
        """Run the statements; the rows each returned (none for one that returns no rows)."""
        try:
            return await self._run(conn)
        except psycopg.errors.InvalidSqlStatementName:
            # The connection lost what it prepared: psycopg sends DEALLOCATE ALL after a rollback once
            # it prepared statements of its own. The script was rolled back whole: prepare, run again.
            await _prepare(conn, self._prepared)
            return await self._run(conn)

    async def _run(self, conn: Conn) -> list[list[tuple[Any, ...]]]:
        async with psycopg.AsyncClientCursor(conn) as cur:
            await cur.execute("; ".join(self._statements), self._params)
            results: list[list[tuple[Any, ...]]] = []
            while True:
                results.append(await cur.fetchall() if cur.description is not None else [])
                if not cur.nextset():
                    return results


def _numbered(sql: str) -> str:
    """``sql`` with its ``%s`` placeholders numbered as the server's (``$1``, ``$2`` ...), for ``PREPARE``."""
    first, *rest = sql.split("%s")
    return (first + "".join(f"${n}{part}" for n, part in enumerate(rest, 1))).replace("%%", "%")


async def _prepare(conn: Conn, prepared: Mapping[str, str]) -> None:
    """Prepare the statements scripts run (their text: their name) on a pooled connection, those it has
    not prepared yet: on a new one (the pool's ``configure``), and again on one that lost them."""
    cur = await conn.execute("SELECT name FROM pg_prepared_statements")
    have = {row[0] for row in await cur.fetchall()}
    for sql, name in prepared.items():
        if name not in have:
            await conn.execute(f"PREPARE {name} AS {_numbered(sql)}".encode())


def _heads_to_lock(keys: Iterable[str | None]) -> list[str]:
    """The keys whose head rows :data:`_LOCK_HEADS` locks, in key order (``None``s left out): none
    unless there are several."""
    ordered = sorted({key for key in keys if key is not None})
    return ordered if len(ordered) > 1 else []


def _lock_heads(script: _Script, keys: Iterable[str | None]) -> None:
    if ordered := _heads_to_lock(keys):
        script.add(_LOCK_HEADS, (ordered,))


def _chat_of(job: NewJob) -> tuple[str | None, str | None]:
    """The ``chat_instance`` and ``chat`` columns of ``job`` (NULLs: it names no chat)."""
    return job.chat or (None, None)


def _insert_jobs(script: _Script, jobs: Sequence[NewJob]) -> None:
    for j in jobs:
        script.add(_INSERT_JOB, (j.kind, j.key, j.payload, j.scope_id, j.delay, *_chat_of(j)))


def _upsert_conversations(script: _Script, records: Sequence[ConversationRecord], *, merge: bool) -> None:
    upsert = _MERGE_CONVERSATION if merge else _REPLACE_CONVERSATION
    for record in records:
        take_over, row = conversation_params(record)
        script.add(_TAKE_OVER_CHAT, take_over)
        script.add(upsert, row)


def _upsert_messages(script: _Script, records: Sequence[MessageRecord]) -> None:
    for r in records:
        script.add(_UPSERT_MESSAGE, message_params(r))


def _redacted(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "postgresql://…"
    host, port, dbname = info.get("host", ""), info.get("port", ""), info.get("dbname", "")
    return f"postgresql://{host}{':' + str(port) if port else ''}/{dbname}"


class PostgresStore(PostgresRegistryRows, MappingLookups):
    """:class:`~amoconnect.store.base.Store` on a PostgreSQL database shared by many processes.

    ``url`` is a libpq connection string or ``postgresql://`` URL. ``pool_size`` caps this
    process's connections (one more listens for new work). ``lease`` is how long a claimed
    job stays this process's without a heartbeat: after a crash its conversation waits that
    long before another process takes it over. With a ``finished_retention`` (seconds) a
    finished job moves to the ``finished`` table, for inspection, and is deleted from there
    once older than that; without one it is deleted at once.
    """

    placeholder = "%s"

    def __init__(self, url: str, *, pool_size: int = 10, lease: float = 30.0, finished_retention: float = 0.0) -> None:
        if not (lease > 0 and math.isfinite(lease)):
            raise StoreError(f"store lease must be a positive number of seconds, got {lease!r}")
        self.url = url
        self.where = _redacted(url)
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        """This process's name on the jobs it holds: host, pid and a random part."""
        self._lease = lease
        self._finished_retention = finished_retention
        kept = (
            f", kept AS (INSERT INTO finished SELECT *, {_NOW} FROM done ON CONFLICT (id) DO NOTHING)"
            if finished_retention > 0
            else ""
        )
        self._finish_sql = f"WITH {_ALL_DONE}{kept} {_UNLESS_ALL_HELD}"
        scripted = (
            self._finish_sql,
            _TAKE_OVER_CHAT,
            _MERGE_CONVERSATION,
            _REPLACE_CONVERSATION,
            _UPSERT_MESSAGE,
            _UPSERT_MESSAGES,
            _ACTIVITY,
            _ACTIVITIES,
            _NEXT_OF_KEY,
            _HAS_HEAD,
            _LOCK_HEADS,
            _INSERT_JOB,
            _BURY,
        )
        self._prepared = {sql: f"amoconnect_{n}" for n, sql in enumerate(scripted, 1)}
        """The statements scripts run, by the name each pooled connection prepares them under."""
        self._pool_size = max(2, pool_size)
        self._pool: psycopg_pool.AsyncConnectionPool[Conn] | None = None
        self._wake = asyncio.Event()
        self._listening = False
        self._tasks: list[asyncio.Task[None]] = []
        self._notifier: asyncio.Task[None] | None = None
        self._notify_wanted = False
        self._due: tuple[float | None, float] | None = None
        """What a short claim found about the next due job: :meth:`next_due_in` then asks no more (until
        a commit of this process, or the next claim)."""
        self._held: dict[int, str] = {}
        """The jobs this process claimed and has not settled or abandoned: the heartbeat extends their leases."""
        self.recovered = 0
        self._disk = OnDisk()
        """Commits made without waiting for the WAL's flush, and how many of them are known to be flushed
        (by :meth:`flush`, an enqueue or a durable finish: one WAL for the whole server, flushed in order)."""
        self.unwritten = Unwritten()
        self._soon: list[_Soon] = []
        self._finisher: asyncio.Task[None] | None = None
        self._soon_full = asyncio.Event()

    # -- connections ---------------------------------------------------------------------
    def _error(self, action: str, exc: Exception) -> StoreError:
        return StoreError(f"PostgreSQL store {self.where}: {action} failed: {exc}")

    @contextlib.asynccontextmanager
    async def _conn(self, action: str, *, transaction: bool = False) -> AsyncIterator[Conn]:
        """A pooled connection for one operation; with ``transaction`` its statements commit together
        (a :class:`_Script`'s do without)."""
        pool = self._pool  # the one the connection goes back to, even once close() let go of it
        if pool is None:
            raise StoreError(f"PostgreSQL store {self.where} is not open")
        try:
            # Shielded: an operation takes milliseconds, and a query cancelled halfway costs the
            # connection (psycopg closes it) and leaves the caller unsure whether it committed.
            with anyio.CancelScope(shield=True):
                # getconn/putconn, not the pool's connection(): its connection context commits or rolls
                # back, which the connections in autocommit never need (measured: 114 -> 83 Python calls
                # a checkout); putconn rolls back what an error left open, or replaces a broken connection.
                conn = await pool.getconn(timeout=10)
                try:
                    if transaction:
                        async with conn.transaction():
                            yield conn
                    else:
                        yield conn
                finally:
                    await pool.putconn(conn)
        except psycopg.Error as exc:  # psycopg_pool's PoolTimeout and PoolClosed are psycopg errors too
            raise self._error(action, exc) from exc

    async def _one(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        async with self._conn("read") as conn:
            cur = await conn.execute(sql, params)
            row: tuple[Any, ...] | None = await cur.fetchone()
            return row

    async def _fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        async with self._conn("read") as conn:
            cur = await conn.execute(sql, params)
            return list(await cur.fetchall())

    async def _write(self, sql: str, params: Sequence[Any] = (), *, notify: bool = False) -> int:
        async with self._conn("write") as conn:
            cur = await conn.execute(sql, params)
        if notify and cur.rowcount:
            self._work_committed()
        return cur.rowcount

    def _work_committed(self, *, notified: bool = False) -> None:
        """Work was committed: wake this process's workers now, every process's with a NOTIFY soon (unless the
        commit ``notified`` them itself)."""
        self._wake.set()
        self._due = None
        if notified:
            return
        self._notify_wanted = True
        if self._pool is not None and (self._notifier is None or self._notifier.done()):
            self._notifier = asyncio.get_running_loop().create_task(self._notify(), name="amoconnect-pg-notify")

    async def _notify(self) -> None:
        """One NOTIFY for every commit that asked since the last one was sent."""
        while self._notify_wanted:
            self._notify_wanted = False
            try:
                await self._write("SELECT pg_notify(%s, %s)", (_CHANNEL, self.owner))
            except StoreError as exc:
                log.warning(
                    "store notification failed; other processes find the work at their next look", error=str(exc)
                )
                return

    # -- schema --------------------------------------------------------------------------
    async def schema_version(self) -> int:
        """The version of the schema in the database, 0 when none was applied."""
        async with await self._connect("read the schema version") as conn:
            return await self._version(conn)

    async def _connect(self, action: str) -> Conn:
        try:
            return await psycopg.AsyncConnection.connect(self.url, autocommit=True, connect_timeout=10)
        except psycopg.Error as exc:
            raise self._error(action, exc) from exc

    @staticmethod
    async def _version(conn: Conn) -> int:
        cur = await conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL")
        exists = await cur.fetchone()
        if not exists or not exists[0]:
            return 0
        cur = await conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
        row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def migrate(self) -> list[int]:
        """Apply the migrations the database lacks, each in its own transaction; returns their versions."""
        applied: list[int] = []
        async with await self._connect("migrate") as conn:
            try:
                async with conn.transaction():
                    await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATE_LOCK,))
                    await conn.execute(
                        "CREATE TABLE IF NOT EXISTS schema_migrations "
                        "(version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
                    )
                    current = await self._version(conn)
                    if current > SCHEMA_VERSION:
                        raise StoreError(self._too_new(current))
                    for version in range(current + 1, SCHEMA_VERSION + 1):
                        await conn.execute(MIGRATIONS[version - 1].encode())
                        await conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
                        applied.append(version)
            except psycopg.Error as exc:
                raise self._error("migrate", exc) from exc
        return applied

    def _too_new(self, version: int) -> str:
        return (
            f"PostgreSQL store {self.where} has schema version {version}, newer than this amoconnect "
            f"({SCHEMA_VERSION}); upgrade amoconnect"
        )

    # -- lifecycle -----------------------------------------------------------------------
    async def open(self, *, recover: bool = True) -> None:
        """Check the schema version, open the pool and start listening for new work.

        Jobs are recovered by their expired leases, which is safe beside running connectors: ``recover``
        changes nothing here.
        """
        if self._pool is not None:
            return
        version = await self.schema_version()
        if version > SCHEMA_VERSION:
            raise StoreError(self._too_new(version))
        if version < SCHEMA_VERSION:
            raise StoreError(
                f"PostgreSQL store {self.where} has schema version {version}, this amoconnect needs "
                f"{SCHEMA_VERSION}: run `amoconnect migrate`"
            )
        pool: psycopg_pool.AsyncConnectionPool[Conn] = psycopg_pool.AsyncConnectionPool(
            self.url,
            min_size=1,
            max_size=self._pool_size,
            open=False,
            kwargs={"autocommit": True},
            configure=functools.partial(_prepare, prepared=self._prepared),
        )
        try:
            await pool.open(wait=True, timeout=10)
        except psycopg_pool.PoolTimeout as exc:
            await pool.close()
            raise self._error("connect", exc) from exc
        self._pool = pool
        self.recovered = await self.release_expired()
        listening = asyncio.Event()
        self._tasks = [
            asyncio.create_task(self._listen(listening), name="amoconnect-pg-listen"),
            asyncio.create_task(self._keep_leases(), name="amoconnect-pg-leases"),
        ]
        with anyio.move_on_after(10):
            await listening.wait()

    async def close(self) -> None:
        if self._pool is None:
            return
        if self._finisher is not None:
            with contextlib.suppress(Exception):
                await self._finisher  # what was accepted commits before the pool closes
            self._finisher = None
        pool, self._pool = self._pool, None
        if self._notifier is not None:
            self._tasks.append(self._notifier)
            self._notifier = None
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        self._held.clear()
        self.unwritten.forget()
        # Jobs still held were left by a drain that timed out (or abandoned): hand them back at once.
        with contextlib.suppress(psycopg.Error):
            async with pool.connection() as conn:
                await conn.execute(
                    "UPDATE queue SET state = 'queued', owner = NULL WHERE state = 'running' AND owner = %s",
                    (self.owner,),
                )
        await pool.close()

    async def __aenter__(self) -> PostgresStore:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _listen(self, listening: asyncio.Event) -> None:
        """Hold a connection that LISTENs for committed jobs; reconnect with backoff when it drops."""
        delay = 0.5
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self.url, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {_CHANNEL}")
                    self._listening = True
                    listening.set()
                    delay = 0.5
                    self._wake.set()  # work may have been committed while we were not listening
                    async for note in conn.notifies():
                        if note.payload != self.owner:  # its own commits woke this process's workers
                            self._wake.set()
            except psycopg.Error as exc:
                log.warning("store listener disconnected; reconnecting", store=self.where, error=str(exc))
            finally:
                self._listening = False
            listening.set()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)

    async def _keep_leases(self) -> None:
        """Extend the leases of the jobs held, free the jobs whose leases ran out."""
        while True:
            await asyncio.sleep(self._lease / 3)
            try:
                if self._held:
                    await self._write(
                        f"UPDATE queue SET lease_until = {_NOW} + %s WHERE id = ANY(%s) AND owner = %s",
                        (self._lease, list(self._held), self.owner),
                    )
                freed = await self.release_expired()
            except StoreError as exc:
                log.warning("store lease upkeep failed", error=str(exc))
                continue
            if freed:
                log.warning("jobs of a stopped process taken back", count=freed)

    async def release_expired(self) -> int:
        """Put the running jobs whose lease ran out (their process stopped) back in the queue; returns how many."""
        return await self._write(
            f"UPDATE queue SET state = 'queued', owner = NULL WHERE state = 'running' AND lease_until < {_NOW}",
            notify=True,
        )

    # -- queue ---------------------------------------------------------------------------
    async def enqueue(self, jobs: Sequence[NewJob], *, dedup: Sequence[str] = ()) -> bool:
        crash_point("store.enqueue")  # an ingest commits as its statement runs: its last moment unwritten
        keys = list(dict.fromkeys(dedup))
        several = len({j.key for j in jobs}) > 1

        # Dedup keys and jobs in one statement, one round trip. With several keys a seen
        # one must also undo the new ones, so the statement runs in a transaction to roll back.
        # Jobs of several conversations first lock the existing head rows in key order.
        async def write() -> None:
            async with self._conn("enqueue", transaction=len(keys) > 1 or several) as conn:
                if len(jobs) == 1 and len(keys) <= 1:
                    (one,) = jobs
                    scalars = (one.kind, one.key, one.payload, one.scope_id, float(one.delay), *_chat_of(one))
                    cur = await conn.execute(
                        _ENQUEUE_ONE, (keys[0] if keys else None, *scalars, len(keys), _CHANNEL, self.owner)
                    )
                else:
                    if ordered := _heads_to_lock(j.key for j in jobs):
                        await conn.execute(_LOCK_HEADS, (ordered,))
                    cur = await conn.execute(
                        _ENQUEUE,
                        (
                            keys,
                            [j.kind for j in jobs],
                            [j.key for j in jobs],
                            [j.payload for j in jobs],
                            [j.scope_id for j in jobs],
                            [float(j.delay) for j in jobs],
                            [_chat_of(j)[0] for j in jobs],
                            [_chat_of(j)[1] for j in jobs],
                            len(keys),
                            _CHANNEL,
                            self.owner,
                        ),
                    )
                row = await cur.fetchone()
                if row is None or row[0] != len(keys):
                    raise _Seen

        unsynced = self._disk.unsynced
        try:
            await _again_after_deadlock("enqueue", write)
        except _Seen:
            return False
        self._disk.covered(unsynced)  # a synchronous commit: the WAL is flushed up to it
        if jobs:
            self._work_committed(notified=True)
        return True

    def hand_off_to(self, taker: Taker | None) -> None:
        """Nothing is handed over: a new job is the claims' (measured: taking it in the enqueue's
        transaction, pipelined, cost more above a few hundred messages a second than the claims it saved)."""

    async def claim(self, limit: int) -> list[Job]:
        """Also looks, in the same round trip, for when the next job will be due: a claim that comes back
        short is followed by :meth:`next_due_in` (a round trip of its own cost as much as the claim's)."""
        with self.unwritten.reading() as read:
            async with self._conn("claim") as conn:
                cur = await conn.execute(_CLAIM, (limit, self.owner, self._lease))
                rows = await cur.fetchall()
            jobs = [self._taken(row, read) for row in rows if row[0] is not None]
        due = next((row[-1] for row in rows if row[0] is None), None)
        self._due = (None if due is None else float(due), time.monotonic())
        jobs.sort(key=lambda job: job.id)
        self._held.update((job.id, job.key) for job in jobs)
        return jobs

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
        held = self._held.get(job_id)
        key = held if take_next else None
        ahead = not (durable or then)

        async def write() -> tuple[list[tuple[Any, ...]], bool]:
            script = self._script()
            if ahead:  # committed without waiting for the WAL's flush: see flush()
                script.add(_UNSYNCED)
            _lock_heads(script, [held, *(j.key for j in then)])
            self._finished(script, [Finish(job_id, conversations, messages, activity)])
            _insert_jobs(script, then)
            took = script.add(_NEXT_OF_KEY, (key, self.owner, self._lease)) if key is not None else None
            left = script.add(_HAS_HEAD, (held,)) if held is not None else None
            results = await self._run_script("finish", script)
            if left is None:
                return [], True
            return (results[took] if took is not None else []), bool(results[left][0][0])

        unsynced = self._disk.unsynced
        try:
            with self.unwritten.reading() as read:  # what the next job's conversation may lack
                taken, more = await _again_after_deadlock("finish", write)
        except StoreError as exc:
            self._lost(job_id, "finish", exc)
            return None
        finally:
            if conversations:
                self.unwritten.forget(conversations)  # known rows from before the finish
        if ahead:
            self._disk.lazy_commit()
        else:
            self._disk.covered(unsynced)  # a synchronous commit: the WAL is flushed up to it
        # The next job of the conversation (unless this finish took it, or none is left) or a follow-up
        # may now be claimed, by any process: tell them (a drain of one conversation wakes nobody).
        self._settled(job_id, wake=bool(then) or (not taken and more))
        if not taken:
            return None
        job = self._taken(taken[0], read)
        self._held[job.id] = job.key
        return job

    def _taken(self, row: tuple[Any, ...], read: Read) -> Job:
        """A job a claim or a finish took (a row of :data:`_CLAIMED`); the conversation that came
        with it answers the job's lookup of it (:meth:`Unwritten.claimed`)."""
        found = conversation(row[_JOB_FIELDS : _JOB_FIELDS + _CONVERSATION_FIELDS]) if row[_JOB_FIELDS] else None
        if found is not None:
            self.unwritten.claimed((found.instance, found.chat), read, found)
        return Job(*row[:_JOB_FIELDS])

    def _script(self) -> _Script:
        return _Script(self._prepared)

    async def _run_script(self, action: str, script: _Script) -> list[list[tuple[Any, ...]]]:
        """Run ``script`` (:meth:`_Script.run`) on a pooled connection; its rows, statement by statement."""
        async with self._conn(action) as conn:
            return await script.run(conn)

    def _finished(self, script: _Script, finishes: Sequence[Finish]) -> None:
        """Finishes' writes, added to ``script``: their jobs out of the queue (while held), their records
        in, as if written one finish after the other (:func:`~.sql.grouped`)."""
        ids = [f.job_id for f in finishes]
        script.add(self._finish_sql, (ids, self.owner, len(set(ids))))
        together = grouped(finishes)
        if together is None:  # written in turn
            for f in finishes:
                _upsert_conversations(script, f.conversations, merge=True)
                _upsert_messages(script, f.messages)
                for a in f.activity:
                    script.add(_ACTIVITY, activity_params(a))
            return
        conversations, messages, activity = together
        _upsert_conversations(script, conversations, merge=True)
        if len(messages) > 1:
            script.add(_UPSERT_MESSAGES, [list(column) for column in zip(*map(message_params, messages), strict=True)])
        else:
            _upsert_messages(script, messages)
        if sum(len(f.activity) for f in finishes) == 1:
            script.add(_ACTIVITY, activity_params(activity[0][0]))
        elif activity:
            rows = [
                (a.scope_id, a.conversation_id, a.msgid, a.direction, a.preview[:PREVIEW_CHARS], a.at, out_at)
                for a, out_at in activity
            ]
            script.add(_ACTIVITIES, [list(column) for column in zip(*rows, strict=True)])

    def finish_soon(
        self,
        job_id: int,
        *,
        conversations: Sequence[ConversationRecord] = (),
        messages: Sequence[MessageRecord] = (),
        activity: Sequence[Activity] = (),
    ) -> asyncio.Future[None]:
        if self._pool is None:
            raise StoreError(f"PostgreSQL store {self.where} is not open")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        key = self._held.get(job_id)
        held = self.unwritten.add(conversations, messages)
        future.add_done_callback(lambda _: self.unwritten.drop(held))  # unless committed (then nothing)
        writes = Finish(job_id, tuple(conversations), tuple(messages), tuple(activity))
        self._soon.append(_Soon(writes, key, future, held))
        if self._finisher is None or self._finisher.done():
            self._finisher = asyncio.get_running_loop().create_task(self._finish_batches(), name="amoconnect-pg-finish")
        elif len(self._soon) >= SOON_GROUP:
            self._soon_full.set()
        return future

    async def _finish_batches(self) -> None:
        """Commit the finishes :meth:`finish_soon` accepted, all those waiting in one transaction that
        does not wait for the WAL's flush; a batch that fails is done again one finish at a time."""
        while self._soon:
            if len(self._soon) < SOON_GROUP and self._pool is not None:
                # Grouped: a transaction once SOON_GROUP are waiting or SOON_LINGER seconds after the first.
                with anyio.move_on_after(SOON_LINGER):
                    await self._soon_full.wait()
            self._soon_full = asyncio.Event()
            batch, self._soon = self._soon, []
            try:
                await self._finish_batch(batch)
            except StoreError as exc:
                if len(batch) == 1:
                    self._lost_soon(batch[0], exc)
                    continue
                for one in batch:
                    try:
                        await self._finish_batch([one])
                    except StoreError as error:
                        self._lost_soon(one, error)
            except BaseException as exc:  # cancelled with the store's close: the jobs are handed back
                for one in batch + self._soon:
                    if not one.future.done():
                        one.future.set_exception(StoreError(f"PostgreSQL store {self.where} closed: {exc!r}"))
                raise

    async def _finish_batch(self, batch: list[_Soon]) -> None:
        async def write() -> None:
            script = self._script()
            script.add(_UNSYNCED)
            _lock_heads(script, (one.key for one in batch))
            self._finished(script, [one.writes for one in batch])
            await self._run_script("finish", script)

        await _again_after_deadlock("finish", write)
        self._disk.lazy_commit()
        for one in batch:
            # The holder finishes the conversation's run with a write that wakes.
            self._settled(one.writes.job_id, wake=False)
            self.unwritten.committed(one.held)
            if not one.future.done():
                one.future.set_result(None)

    def _lost_soon(self, one: _Soon, error: StoreError) -> None:
        """A finish of the batch failed: a job no longer held is dropped (:meth:`_lost`), any other error
        is its caller's."""
        if one.future.done():
            return
        try:
            self._lost(one.writes.job_id, "finish", error)
        except StoreError:
            one.future.set_exception(error)
        else:
            one.future.set_result(None)

    async def take_ahead(self, job: Job, limit: int) -> list[Job]:
        async with self._conn("take ahead") as conn:
            params = (
                self.owner,
                self._lease,
                job.kind,
                job.key,
                job.id,
                limit,
                job.key,
                job.id,
                job.key,
                job.id,
                self.owner,
            )
            cur = await conn.execute(_AHEAD, params)
            rows = await cur.fetchall()
        jobs = sorted((Job(*row) for row in rows), key=lambda j: j.id)
        self._held.update((j.id, j.key) for j in jobs)
        return jobs

    async def release(self, job_ids: Sequence[int]) -> None:
        if not job_ids:
            return
        await self._write(
            "UPDATE queue SET state = 'queued', owner = NULL, attempts = attempts - 1 "
            "WHERE id = ANY(%s) AND owner = %s AND state = 'running'",
            (list(job_ids), self.owner),
            notify=True,
        )
        for job_id in job_ids:
            self._held.pop(job_id, None)

    async def flush(self, *, linger: float = 0.0) -> None:
        """A synchronous commit of one small write, unless an enqueue or a durable finish committed within
        ``linger`` seconds did it: it waits for the WAL's flush up to its own record, so every commit
        before it is on disk too (one WAL for the whole server)."""
        target = self._disk.unsynced
        if await self._disk.covered_within(target, linger):
            return
        await self._write(_SYNCED_WRITE)
        self._disk.covered(target)

    async def retry(self, job_id: int, *, delay: float, error: str) -> None:
        if not await self._write(
            f"UPDATE queue SET state = 'queued', owner = NULL, next_run = {_NOW} + %s, last_error = %s "
            "WHERE id = %s AND owner = %s",
            (delay, error, job_id, self.owner),
            notify=True,
        ):
            return self._lost(job_id, "retry")
        self._settled(job_id)

    async def bury(self, job_id: int, *, error: str, then: Sequence[NewJob] = ()) -> None:
        async def write() -> None:
            script = self._script()
            _lock_heads(script, [self._held.get(job_id), *(j.key for j in then)])
            script.add(_BURY, (job_id, self.owner, error))
            _insert_jobs(script, then)
            await self._run_script("bury", script)

        try:
            await _again_after_deadlock("bury", write)
        except StoreError as exc:
            return self._lost(job_id, "bury", exc)
        self._settled(job_id)

    def abandon(self, job_id: int) -> None:
        """Stop extending the lease of a job whose outcome could not be recorded: once it runs out, the
        job is queued again (by :meth:`release_expired` of any process) and run again."""
        self._held.pop(job_id, None)

    def _settled(self, job_id: int, *, wake: bool = True) -> None:
        """A held job's outcome is recorded: its lease needs no more extending, and (``wake``) the workers
        may look again."""
        self._held.pop(job_id, None)
        if wake:
            self._work_committed()

    def _lost(self, job_id: int, action: str, error: StoreError | None = None) -> None:
        """A job this process no longer holds: its lease ran out and another process may have taken it over."""
        if error is not None and _NOT_HELD not in str(error):
            raise error
        self._held.pop(job_id, None)
        self.unwritten.forget()  # another process runs the job's conversation now
        log.warning(
            "job taken over by another process after this one's lease ran out; its outcome here is dropped",
            job=job_id,
            action=action,
            owner=self.owner,
        )

    async def next_due_in(self) -> float | None:
        looked, self._due = self._due, None
        if looked is not None:
            due, at = looked
            return None if due is None else max(due - (time.monotonic() - at), 0.0)
        row = await self._one(_DUE_IN)
        return None if row is None or row[0] is None else max(float(row[0]), 0.0)

    async def wait_for_work(self, max_wait: float) -> None:
        # Without a listener (the connection dropped) other processes' commits go unheard: look again soon.
        with anyio.move_on_after(max_wait if self._listening else min(max_wait, 1.0)):
            await self._wake.wait()
        self._wake.clear()

    async def dead_letters(self, limit: int = 100, *, scope_id: str | None = None) -> list[DeadLetter]:
        where, params = _id_filter(None, scope_id)
        rows = await self._fetchall(
            "SELECT id, kind, key, payload, scope_id, attempts, created_at, failed_at, error FROM dead "
            f"{where} ORDER BY id LIMIT %s",
            (*params, limit),
        )
        return [DeadLetter(*row) for row in rows]

    async def requeue(self, ids: Sequence[int] | None = None, *, scope_id: str | None = None) -> int:
        where, params = _id_filter(ids, scope_id)
        async with self._conn("requeue", transaction=True) as conn:
            await conn.execute(
                "INSERT INTO queue (id, kind, key, payload, scope_id, attempts, next_run, created_at, last_error) "
                f"SELECT id, kind, key, payload, scope_id, 0, {_NOW}, created_at, error FROM dead {where}",
                params,
            )
            cur = await conn.execute(f"DELETE FROM dead {where}", params)
        self._work_committed()
        return cur.rowcount

    async def purge(self, ids: Sequence[int] | None = None, *, scope_id: str | None = None) -> int:
        where, params = _id_filter(ids, scope_id)
        return await self._write(f"DELETE FROM dead {where}", params)

    async def counts(self) -> dict[str, int]:
        counts = {"queued": 0, "running": 0}
        counts.update(
            (state, int(n)) for state, n in await self._fetchall("SELECT state, COUNT(*) FROM queue GROUP BY state")
        )
        row = await self._one("SELECT COUNT(*) FROM dead")
        counts["dead"] = int(row[0]) if row else 0
        return counts

    async def prune(self, *, dedup_older_than: float) -> dict[str, int]:
        pruned = {
            "dedup keys": await self._write(f"DELETE FROM dedup WHERE seen_at < {_NOW} - %s", (dedup_older_than,)),
            "idle rate limit rows": await self.prune_limits(),
            "button data": await self._write(f"DELETE FROM button_data WHERE expires_at < {_NOW}"),
        }
        if self._finished_retention:
            pruned["finished jobs"] = await self.prune_finished(self._finished_retention)
        return pruned

    async def prune_finished(self, older_than: float) -> int:
        """Forget finished jobs kept more than ``older_than`` seconds."""
        return await self._write(f"DELETE FROM finished WHERE finished_at < {_NOW} - %s", (older_than,))

    # -- media (amoconnect.media.MediaRows) ----------------------------------------------
    async def put_media(self, file_id: str, content: bytes, content_type: str, file_name: str) -> None:
        await self._write(
            f"INSERT INTO media VALUES (%s, %s, %s, %s, {_NOW})", (file_id, content_type, file_name, content)
        )

    async def get_media(self, file_id: str) -> tuple[bytes, str, str] | None:
        row = await self._one("SELECT content, content_type, file_name FROM media WHERE id = %s", (file_id,))
        return None if row is None else (bytes(row[0]), str(row[1]), str(row[2]))

    async def prune_media(self, older_than: float) -> int:
        return await self._write(f"DELETE FROM media WHERE stored_at < {_NOW} - %s", (older_than,))

    # -- mapping -------------------------------------------------------------------------
    async def put_conversation(self, record: ConversationRecord) -> None:
        try:
            script = self._script()
            _upsert_conversations(script, [record], merge=False)
            await self._run_script("write", script)
        finally:
            self.unwritten.forget([record])

    async def put_message(self, record: MessageRecord) -> None:
        script = self._script()
        _upsert_messages(script, [record])
        await self._run_script("write", script)

    # -- activity ------------------------------------------------------------------------
    async def recent_conversations(self, scope_id: str, limit: int = 50) -> list[RecentConversation]:
        return [recent_row(row) for row in await self._fetchall(_RECENT, (scope_id, limit))]

    async def source_activity(self, scope_id: str) -> list[SourceActivity]:
        return [activity_row(row) for row in await self._fetchall(_SOURCE_ACTIVITY, (scope_id,))]

    # -- leases --------------------------------------------------------------------------
    async def hold_lease(self, name: str, seconds: float) -> bool:
        row = await self._one(
            f"INSERT INTO leases AS l VALUES (%s, %s, {_NOW} + %s) "
            "ON CONFLICT (name) DO UPDATE SET owner = EXCLUDED.owner, until = EXCLUDED.until "
            f"WHERE l.owner = EXCLUDED.owner OR l.until < {_NOW} RETURNING owner",
            (name, self.owner, seconds),
        )
        return row is not None

    async def release_lease(self, name: str) -> None:
        await self._write("DELETE FROM leases WHERE name = %s AND owner = %s", (name, self.owner))

    # -- adapter state -------------------------------------------------------------------
    async def probe(self) -> None:
        await self.set_state("amoconnect", "probe", b"")

    async def set_state(self, namespace: str, key: str, value: bytes) -> None:
        await self._write(
            "INSERT INTO state VALUES (%s, %s, %s) ON CONFLICT (namespace, key) DO UPDATE SET value = EXCLUDED.value",
            (namespace, key, value),
        )

    async def delete_state(self, namespace: str, key: str) -> None:
        await self._write("DELETE FROM state WHERE namespace = %s AND key = %s", (namespace, key))

    # -- button data ---------------------------------------------------------------------
    async def put_button_data(self, key: str, value: str, keep_for: float) -> None:
        await self._write(
            f"INSERT INTO button_data VALUES (%s, %s, {_NOW} + %s) "
            "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, expires_at = EXCLUDED.expires_at",
            (key, value, keep_for),
        )

    async def button_data(self, key: str) -> str | None:
        row = await self._one(f"SELECT value FROM button_data WHERE key = %s AND expires_at >= {_NOW}", (key,))
        return None if row is None else str(row[0])

    # -- rate limits ---------------------------------------------------------------------
    def limiter(self, name: str, rate: float, per: float = 1.0, burst: int | None = None) -> Limiter:
        """The limit called ``name``, held in the database for every process on it."""
        return PostgresLimiter(self._conn, name, Rate.of(rate, per, burst))

    async def prune_limits(self) -> int:
        """Forget the limiter keys whose bucket is full again (such a row says nothing); returns how many."""
        return await self._write(f"DELETE FROM rate_limits WHERE tat < {_NOW}")


@dataclass
class _Soon:
    """A finish :meth:`PostgresStore.finish_soon` accepted and has not committed yet."""

    writes: Finish
    key: str | None
    future: asyncio.Future[None]
    held: object
    """Its records' token in :attr:`PostgresStore.unwritten`."""


class _Seen(Exception):
    """A dedup key was seen before: roll the enqueue back."""


def _id_filter(ids: Sequence[int] | None, scope_id: str | None = None) -> tuple[str, tuple[Any, ...]]:
    """The ``WHERE`` of dead letters with these ``ids`` (all: None) of ``scope_id`` (any: None)."""
    clauses: list[str] = []
    params: tuple[Any, ...] = ()
    if ids is not None:
        clauses.append("id = ANY(%s)")
        params = (list(ids),)
    if scope_id is not None:
        clauses.append("scope_id = %s")
        params = (*params, scope_id)
    return (f"WHERE {' AND '.join(clauses)}" if clauses else ""), params
