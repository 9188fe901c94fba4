"""Accounts and sources kept in the store: records, schema and SQL both engines share.

The registry (:mod:`amoconnect.registry`) caches them in memory and follows their changes.
Every write to either table takes the next number of one counter (``registry_revision``) in
its transaction and stamps it on the row it writes; the counter's row lock serialises the
writers, so when a reader sees revision ``R`` every write numbered up to ``R`` has committed.
A reader that knows everything up to ``since`` asks for the rows stamped after it: an index
lookup, however many accounts there are. A removed source stays as a row marked ``removed``
so that readers see it go.

Sources of the configuration file are never written here (their secrets stay in the
environment); the registry adds them as fixed entries.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar, runtime_checkable

import anyio
import msgspec

from ..errors import StoreError

__all__ = [
    "ACCOUNT_IDS",
    "ACCOUNT_STATES",
    "ACCOUNT_STATE_REASONS",
    "REGISTRY_CHANNEL",
    "SOURCE_STATES",
    "AccountRecord",
    "AccountState",
    "RegistryChanges",
    "RegistryRows",
    "SQLiteRegistryRows",
    "SourceRecord",
    "SourceState",
    "account_of",
    "account_params",
    "registry_schema",
    "registry_sql",
    "source_of",
    "source_params",
]

T = TypeVar("T")

AccountState = Literal["active", "needs_reauth", "disconnected"]
SourceState = Literal["active", "failing", "removed"]
ACCOUNT_STATES: tuple[AccountState, ...] = ("active", "needs_reauth", "disconnected")
SOURCE_STATES: tuple[SourceState, ...] = ("active", "failing", "removed")
REGISTRY_CHANNEL = "amoconnect_registry"
"""PostgreSQL: the channel a registry write notifies."""


class AccountRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One amoCRM account connected to the channel."""

    name: str
    """Our name of it: the configuration's, or the subdomain of an installed account."""
    amojo_id: str
    scope_id: str
    subdomain: str = ""
    domain: str = "amocrm.ru"
    """``amocrm.ru``, ``amocrm.com`` or ``kommo.com``."""
    rest_url: str = ""
    """amoCRM REST base URL: ``https://{subdomain}.{domain}`` unless the configuration says otherwise."""
    token: str = ""
    """The REST API's access token (a long-lived token, or OAuth's)."""
    refresh_token: str = ""
    token_expires_at: float | None = None
    state: AccountState = "active"
    state_reason: str | None = None
    """Why the account needs re-authorisation or was disconnected (``None`` while active)."""
    installed_at: float = 0.0
    time_window_disabled: bool = False
    chat_policy: Literal["create_lead", "link_existing"] = "create_lead"
    amocrm_id: int | None = None
    """amoCRM's numeric id of the account (its OAuth tokens and disconnect hook name it)."""
    fixed: bool = False
    """Declared in the configuration file: not editable at run time."""

    @property
    def active(self) -> bool:
        """Messages of the account flow (a token needing re-authorisation stops only REST lookups)."""
        return self.state != "disconnected"


class SourceRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One messenger instance (a bot, a number, a community) of one account: an amoCRM source."""

    name: str
    """Instance name: a URL part (``/hooks/{plugin}/{name}``), unique."""
    plugin: str
    account: str
    """The account's :attr:`AccountRecord.name`."""
    external_id: str
    """The amoCRM source's external_id, unique within the account."""
    title: str = ""
    default: bool = False
    settings: dict[str, Any] = {}
    """The plugin's settings, validated against its schema."""
    authors: dict[str, str] = {}
    """The messenger's id of a person of the business → that amoCRM user's amojo_id (capability ``echoes``)."""
    amocrm_source_id: int | None = None
    state: SourceState = "active"
    last_error: str | None = None
    fixed: bool = False
    """Declared in the configuration file: not editable at run time."""


class RegistryChanges(msgspec.Struct, frozen=True):
    """The rows written after some revision, up to ``revision``."""

    revision: int
    accounts: list[AccountRecord]
    sources: list[SourceRecord]


@runtime_checkable
class RegistryRows(Protocol):
    """What a store keeps of the registry (both stores do)."""

    async def registry_changes(self, since: int) -> RegistryChanges:
        """The accounts and sources written after revision ``since`` (0: all of them)."""

    async def put_account(self, record: AccountRecord) -> int:
        """Insert or replace an account; returns the write's revision."""

    async def put_source(self, record: SourceRecord) -> int:
        """Insert or replace a source (``state="removed"`` removes it); returns the write's revision."""

    async def bury_jobs_of(self, scope_id: str, error: str) -> int:
        """Move the queued jobs of ``scope_id`` to the dead letters with ``error``; returns how many.
        Running ones are left to finish (their handlers give up on a disconnected account)."""

    async def watch_registry(self, changed: Callable[[], None]) -> None:
        """Call ``changed`` whenever another process may have written (PostgreSQL's notifications);
        runs until cancelled. Without notifications (SQLite) it only waits."""


def registry_schema(time_type: str, id_type: str) -> str:
    """The tables, in an engine's types for times and numbers."""
    return f"""
    CREATE TABLE registry_revision (id INTEGER PRIMARY KEY CHECK (id = 1), revision {id_type} NOT NULL);
    INSERT INTO registry_revision VALUES (1, 0);
    CREATE TABLE accounts (
        name TEXT PRIMARY KEY,
        amojo_id TEXT NOT NULL,
        scope_id TEXT NOT NULL UNIQUE,
        subdomain TEXT NOT NULL,
        domain TEXT NOT NULL,
        rest_url TEXT NOT NULL,
        access_token TEXT NOT NULL,
        refresh_token TEXT NOT NULL,
        token_expires_at {time_type},
        state TEXT NOT NULL CHECK (state IN ('active', 'needs_reauth', 'disconnected')),
        installed_at {time_type} NOT NULL,
        time_window_disabled BOOLEAN NOT NULL,
        chat_policy TEXT NOT NULL,
        revision {id_type} NOT NULL
    );
    CREATE INDEX accounts_revision ON accounts (revision);
    CREATE TABLE sources (
        name TEXT PRIMARY KEY,
        account TEXT NOT NULL,
        plugin TEXT NOT NULL,
        external_id TEXT NOT NULL,
        title TEXT NOT NULL,
        is_default BOOLEAN NOT NULL,
        settings TEXT NOT NULL,
        authors TEXT NOT NULL,
        amocrm_source_id {id_type},
        state TEXT NOT NULL CHECK (state IN ('active', 'failing', 'removed')),
        last_error TEXT,
        revision {id_type} NOT NULL
    );
    CREATE UNIQUE INDEX sources_external_id ON sources (account, external_id) WHERE state <> 'removed';
    CREATE INDEX sources_account ON sources (account);
    CREATE INDEX sources_revision ON sources (revision);
    """


_ACCOUNT_COLUMNS = (
    "name, amojo_id, scope_id, subdomain, domain, rest_url, access_token, refresh_token, token_expires_at, "
    "state, installed_at, time_window_disabled, chat_policy, amocrm_id, state_reason"
)
_SOURCE_COLUMNS = (
    "name, account, plugin, external_id, title, is_default, settings, authors, amocrm_source_id, state, last_error"
)
_BUMP = "UPDATE registry_revision SET revision = revision + 1 WHERE id = 1 RETURNING revision"
_REVISION = "SELECT revision FROM registry_revision WHERE id = 1"


def _upsert(table: str, columns: str, p: str) -> str:
    names = [*columns.split(", "), "revision"]
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in names[1:])
    return (
        f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join([p] * len(names))}) "
        f"ON CONFLICT (name) DO UPDATE SET {updates}"
    )


ACCOUNT_IDS = "ALTER TABLE accounts ADD COLUMN amocrm_id {id_type};"
"""Migration: amoCRM's numeric id of an account (the disconnect hook names it)."""
ACCOUNT_STATE_REASONS = "ALTER TABLE accounts ADD COLUMN state_reason TEXT;"
"""Migration: why an account needs re-authorisation or was disconnected."""


def registry_sql(p: str) -> dict[str, str]:
    """The statements, in an engine's placeholder style ``p``."""
    return {
        "bump": _BUMP,
        "revision": _REVISION,
        "put_account": _upsert("accounts", _ACCOUNT_COLUMNS, p),
        "put_source": _upsert("sources", _SOURCE_COLUMNS, p),
        "accounts": f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE revision > {p} AND revision <= {p} "
        "ORDER BY revision",
        "sources": f"SELECT {_SOURCE_COLUMNS} FROM sources WHERE revision > {p} AND revision <= {p} ORDER BY revision",
    }


_encode = msgspec.json.Encoder().encode


def account_params(r: AccountRecord, revision: int) -> tuple[Any, ...]:
    """``r`` as a row of the accounts table."""
    return (
        r.name,
        r.amojo_id,
        r.scope_id,
        r.subdomain,
        r.domain,
        r.rest_url,
        r.token,
        r.refresh_token,
        r.token_expires_at,
        r.state,
        r.installed_at or time.time(),
        r.time_window_disabled,
        r.chat_policy,
        r.amocrm_id,
        r.state_reason,
        revision,
    )


def source_params(r: SourceRecord, revision: int) -> tuple[Any, ...]:
    """``r`` as a row of the sources table."""
    settings = _encode(r.settings).decode()
    return (
        r.name,
        r.account,
        r.plugin,
        r.external_id,
        r.title,
        r.default,
        settings,
        _encode(r.authors).decode(),
        r.amocrm_source_id,
        r.state,
        r.last_error,
        revision,
    )


def account_of(row: tuple[Any, ...]) -> AccountRecord:
    """A row of the accounts table as a record."""
    (
        name,
        amojo_id,
        scope_id,
        subdomain,
        domain,
        rest_url,
        token,
        refresh,
        expires,
        state,
        installed,
        tw,
        policy,
        aid,
        reason,
    ) = row
    return AccountRecord(
        name=name,
        amojo_id=amojo_id,
        scope_id=scope_id,
        subdomain=subdomain,
        domain=domain,
        rest_url=rest_url,
        token=token,
        refresh_token=refresh,
        token_expires_at=expires,
        state=state,
        installed_at=installed,
        time_window_disabled=bool(tw),
        chat_policy=policy,
        amocrm_id=aid,
        state_reason=reason,
    )


def source_of(row: tuple[Any, ...]) -> SourceRecord:
    """A row of the sources table as a record."""
    name, account, plugin, external_id, title, is_default, settings, authors, amocrm_source_id, state, last_error = row
    return SourceRecord(
        name=name,
        account=account,
        plugin=plugin,
        external_id=external_id,
        title=title,
        default=bool(is_default),
        settings=msgspec.json.decode(settings),
        authors=msgspec.json.decode(authors),
        amocrm_source_id=amocrm_source_id,
        state=state,
        last_error=last_error,
    )


_SQLITE = registry_sql("?")


class SQLiteRegistryRows:
    """:class:`RegistryRows` of the SQLite store (its writer runs the operations)."""

    if TYPE_CHECKING:

        async def _call(self, operation: Callable[[sqlite3.Connection], T], *, wakes: bool = False) -> T: ...

        def _read(self, query: Callable[[sqlite3.Connection], T]) -> T: ...

    async def registry_changes(self, since: int) -> RegistryChanges:
        def run(conn: sqlite3.Connection) -> RegistryChanges:
            conn.execute("BEGIN")  # one snapshot for the three reads
            try:
                (revision,) = conn.execute(_SQLITE["revision"]).fetchone()
                accounts = conn.execute(_SQLITE["accounts"], (since, revision)).fetchall()
                sources = conn.execute(_SQLITE["sources"], (since, revision)).fetchall()
            finally:
                conn.execute("COMMIT")
            return RegistryChanges(revision, [account_of(r) for r in accounts], [source_of(r) for r in sources])

        return self._read(run)

    async def put_account(self, record: AccountRecord) -> int:
        return await self._call(lambda conn: _sqlite_write(conn, "put_account", account_params, record))

    async def put_source(self, record: SourceRecord) -> int:
        return await self._call(lambda conn: _sqlite_write(conn, "put_source", source_params, record))

    async def watch_registry(self, changed: Callable[[], None]) -> None:
        await anyio.sleep_forever()


def _sqlite_write(
    conn: sqlite3.Connection, statement: str, params: Callable[[Any, int], tuple[Any, ...]], record: Any
) -> int:
    (revision,) = conn.execute(_SQLITE["bump"]).fetchone()
    try:
        conn.execute(_SQLITE[statement], params(record, revision))
    except sqlite3.IntegrityError as exc:  # the batch's savepoint undoes the bump
        raise StoreError(f"{statement}: {exc}") from exc
    return int(revision)
