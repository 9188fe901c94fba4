"""The registry of accounts and sources: the configuration's fixed entries and the store's, in memory.

Webhooks and jobs look accounts and sources up here (dictionary lookups: no store round trip,
however many tenants). The cache follows the store: a write made through this registry is
in effect in this process as soon as it returns; a write by another process (a fleet on
PostgreSQL, or a CLI command beside a running connector) is picked up on its notification or,
at the latest, at the next periodic check (:data:`CHECK_INTERVAL`), which asks the store only
for the rows written since the last revision seen.

Entries of the configuration file are *fixed*: listed like the others, never written to the
store (their secrets stay where the file put them), and refused as targets of a change.
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
import msgspec
import structlog

from .config import AccountConfig, Config, SourceConfig
from .errors import RegistryError
from .logging import redact
from .secretbox import SecretBox
from .secretnames import secret_values
from .store.registry import AccountRecord, AccountState, RegistryChanges, RegistryRows, SourceRecord

__all__ = ["CHECK_INTERVAL", "Changes", "Registry", "fixed_account", "fixed_source", "secrets_of"]

log = structlog.get_logger("amoconnect.registry")

_R = TypeVar("_R", AccountRecord, SourceRecord)


def secrets_of(record: AccountRecord | SourceRecord | dict[str, Any]) -> list[str]:
    """The secrets a record (or a plugin's settings) holds: tokens and secret-like settings."""
    if isinstance(record, AccountRecord):
        return [s for s in (record.token, record.refresh_token) if s]
    return secret_values(record.settings if isinstance(record, SourceRecord) else record)


CHECK_INTERVAL = 0.5
"""Seconds between two checks for writes this process was not told about (well inside the 1 s a
fleet converges in)."""


def fixed_account(account: AccountConfig) -> AccountRecord:
    """A ``[[accounts]]`` entry as a fixed record."""
    host = urllib.parse.urlsplit(account.rest_url).hostname or ""
    domain = next((d for d in ("amocrm.ru", "amocrm.com", "kommo.com") if host.endswith("." + d)), "amocrm.ru")
    return AccountRecord(
        name=account.name,
        amojo_id=account.amojo_id,
        scope_id=account.scope_id,
        subdomain=account.subdomain,
        domain=domain,
        rest_url=account.rest_url,
        token=account.token,
        time_window_disabled=account.time_window_disabled,
        chat_policy=account.chat_policy,
        fixed=True,
    )


def fixed_source(source: SourceConfig) -> SourceRecord:
    """A ``[[sources]]`` entry as a fixed record."""
    return SourceRecord(
        name=source.name,
        plugin=source.plugin,
        account=source.account,
        external_id=source.external_id,
        title=source.title,
        default=source.default,
        settings=source.settings,
        authors=source.authors,
        fixed=True,
    )


@dataclass(frozen=True)
class Changes:
    """What one refresh of the cache found changed (records as they are now)."""

    accounts: list[AccountRecord] = field(default_factory=list)
    sources: list[SourceRecord] = field(default_factory=list)
    """Changed sources, removed ones with ``state="removed"``."""

    def __bool__(self) -> bool:
        return bool(self.accounts or self.sources)


class Registry:
    """Accounts and sources, fixed (``config``) and stored (``store``), cached in memory.

    ``store`` may be None (or a store that keeps no registry): then only the fixed entries exist.
    """

    def __init__(self, config: Config, store: object | None) -> None:
        self._rows = store if isinstance(store, RegistryRows) else None
        self._box = SecretBox(config.store.secret_keys)
        self._fixed_accounts = {a.name: fixed_account(a) for a in config.accounts}
        self._fixed_sources = {s.name: fixed_source(s) for s in config.sources}
        self._accounts: dict[str, AccountRecord] = dict(self._fixed_accounts)
        self._by_scope: dict[str, AccountRecord] = {a.scope_id: a for a in self._accounts.values()}
        self._sources: dict[str, SourceRecord] = {}
        self._by_account: dict[str, dict[str, SourceRecord]] = {}
        for fixed in self._fixed_sources.values():
            self._put(fixed)
        self._shadowed: set[str] = set()
        self.revision = 0
        """The store's last revision this cache has applied."""
        self._refreshing = anyio.Lock()
        self._listeners: list[Callable[[Changes], Awaitable[None]]] = []

    # -- lookups (no IO) -------------------------------------------------------------------
    def account(self, name: str) -> AccountRecord | None:
        """The account called ``name``."""
        return self._accounts.get(name)

    def account_by_scope(self, scope_id: str) -> AccountRecord | None:
        """The account connected under ``scope_id``."""
        return self._by_scope.get(scope_id)

    def account_by_amocrm_id(self, amocrm_id: int) -> AccountRecord | None:
        """The account amoCRM knows by the numeric id ``amocrm_id`` (a scan: for rare hooks, not the hot path)."""
        return next((a for a in self._accounts.values() if a.amocrm_id == amocrm_id), None)

    async def bury_jobs_of(self, scope_id: str, error: str) -> int:
        """Move the queued jobs of ``scope_id`` to the dead letters with ``error``; how many."""
        return 0 if self._rows is None else await self._rows.bury_jobs_of(scope_id, error)

    def accounts(self) -> Iterator[AccountRecord]:
        """Every account, fixed ones first."""
        return iter(self._accounts.values())

    def source(self, name: str) -> SourceRecord | None:
        """The source (instance) called ``name``; removed ones are gone."""
        return self._sources.get(name)

    def sources(self, account: str | None = None) -> list[SourceRecord]:
        """Every source, or those of ``account``."""
        if account is None:
            return list(self._sources.values())
        return list(self._by_account.get(account, {}).values())

    # -- following the store ---------------------------------------------------------------
    async def load(self) -> None:
        """Read everything the store keeps (at start)."""
        await self.refresh()

    def subscribe(self, listener: Callable[[Changes], Awaitable[None]]) -> None:
        """Hand every non-empty change to ``listener`` (awaited before the refresh that found it returns)."""
        self._listeners.append(listener)

    async def refresh(self) -> Changes:
        """Apply what was written since the last revision seen, and tell the listeners; what changed."""
        if self._rows is None:
            return Changes()
        async with self._refreshing:  # one at a time: listeners see changes in order
            found = await self._rows.registry_changes(self.revision)
            found = RegistryChanges(
                found.revision,
                [self._box.open_account(a) for a in found.accounts],
                [self._box.open_source(s) for s in found.sources],
            )
            changes = self._apply(found)
            if changes:
                for listener in self._listeners:
                    await listener(changes)
            return changes

    def _apply(self, found: RegistryChanges) -> Changes:
        changes = Changes()
        for account in found.accounts:
            if account.name in self._fixed_accounts:
                self._shadow(f"account {account.name!r}")
                continue
            previous = self._accounts.get(account.name)
            if previous is not None and previous.scope_id != account.scope_id:
                self._by_scope.pop(previous.scope_id, None)
            held = self._by_scope.get(account.scope_id)
            if held is not None and held.fixed:
                self._shadow(f"scope {account.scope_id!r}")
                continue
            for secret in secrets_of(account):
                redact(secret)
            self._accounts[account.name] = self._by_scope[account.scope_id] = account
            changes.accounts.append(account)
        for source in found.sources:
            if source.name in self._fixed_sources:
                self._shadow(f"source {source.name!r}")
                continue
            if source.state == "removed":
                if self._drop(source.name) is None:
                    continue
            else:
                for secret in secrets_of(source):
                    redact(secret)
                self._put(source)
            changes.sources.append(source)
        self.revision = max(self.revision, found.revision)
        return changes

    def _put(self, source: SourceRecord) -> None:
        self._drop(source.name)
        self._sources[source.name] = source
        self._by_account.setdefault(source.account, {})[source.name] = source

    def _drop(self, name: str) -> SourceRecord | None:
        source = self._sources.pop(name, None)
        if source is not None:
            of_account = self._by_account[source.account]
            del of_account[name]
            if not of_account:
                del self._by_account[source.account]
        return source

    def _shadow(self, what: str) -> None:
        if what not in self._shadowed:
            self._shadowed.add(what)
            log.warning(f"{what} is both in the configuration file and in the store; the file's entry is used")

    async def follow(self, *, interval: float = CHECK_INTERVAL) -> None:
        """Until cancelled: refresh on every notification of a write, and every ``interval`` seconds anyway."""
        rows = self._rows
        if rows is None:
            await anyio.sleep_forever()
            return
        notified = anyio.Event()

        def changed() -> None:
            notified.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(rows.watch_registry, changed)
            while True:
                with anyio.move_on_after(interval):
                    await notified.wait()
                notified = anyio.Event()
                try:
                    await self.refresh()
                except Exception as exc:  # the store is down for now: look again at the next check
                    log.warning("registry check failed", error=str(exc))

    # -- writes ----------------------------------------------------------------------------
    def _writable(self) -> RegistryRows:
        if self._rows is None:
            raise RegistryError("this store keeps no accounts or sources: declare them in the configuration file")
        return self._rows

    async def put_account(self, record: AccountRecord) -> Changes:
        """Add or replace a stored account (in effect here when this returns); what changed."""
        rows = self._writable()
        if record.name in self._fixed_accounts:
            raise RegistryError(f"account {record.name!r} is fixed by the configuration file: change it there")
        held = self._by_scope.get(record.scope_id)
        if held is not None and held.name != record.name:
            raise RegistryError(f"scope {record.scope_id!r} is already account {held.name!r}'s")
        installed_at = record.installed_at or time.time()
        await rows.put_account(self._box.seal_account(_replace(record, installed_at=installed_at, fixed=False)))
        return await self.refresh()

    async def set_account_state(self, name: str, state: AccountState, reason: str | None = None) -> Changes:
        """Mark a stored account ``active``, ``needs_reauth`` or ``disconnected``, saying why."""
        account = self._stored_account(name)
        return await self.put_account(_replace(account, state=state, state_reason=reason))

    async def put_source(self, record: SourceRecord) -> Changes:
        """Add or replace a stored source of a known account; what changed."""
        rows = self._writable()
        if record.name in self._fixed_sources:
            raise RegistryError(f"source {record.name!r} is fixed by the configuration file: change it there")
        if record.account not in self._accounts:
            raise RegistryError(f"no account named {record.account!r}")
        for other in self.sources(record.account):
            if other.name != record.name and other.external_id == record.external_id:
                raise RegistryError(
                    f"external_id {record.external_id!r} is source {other.name!r}'s in account {record.account!r}"
                )
        await rows.put_source(self._box.seal_source(_replace(record, fixed=False)))
        return await self.refresh()

    async def remove_source(self, name: str) -> Changes:
        """Remove a stored source; what changed."""
        rows = self._writable()
        source = self._sources.get(name)
        if source is None:
            raise RegistryError(f"no source named {name!r}")
        if source.fixed:
            raise RegistryError(f"source {name!r} is fixed by the configuration file: remove it there")
        # A removed source keeps no secrets: none lingers at rest, and a retired key is never needed for it.
        await rows.put_source(_replace(source, state="removed", settings={}))
        return await self.refresh()

    async def reseal(self) -> int:
        """Write every stored account and source again, its secrets sealed with the first of
        ``store.secret_keys`` (after a new key was put first); how many records."""
        rows = self._writable()
        await self.refresh()
        count = 0
        for account in [a for a in self._accounts.values() if not a.fixed]:
            await rows.put_account(self._box.seal_account(account))
            count += 1
        for source in [s for s in self._sources.values() if not s.fixed]:
            await rows.put_source(self._box.seal_source(source))
            count += 1
        await self.refresh()
        return count

    def _stored_account(self, name: str) -> AccountRecord:
        account = self._accounts.get(name)
        if account is None:
            raise RegistryError(f"no account named {name!r}")
        if account.fixed:
            raise RegistryError(f"account {name!r} is fixed by the configuration file: change it there")
        return account


def _replace(record: _R, **changes: object) -> _R:
    return msgspec.structs.replace(record, **changes)
