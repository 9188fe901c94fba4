"""Operations on accounts and sources at run time, shared by the admin API and the command line.

Adding a source goes step by step, and each step's outcome is reported (:class:`Outcome`):

1. ``settings``: the name, external id and plugin are checked, and the settings against the
   plugin's own schema; the account must exist, be active and have fewer than
   :data:`MAX_SOURCES` sources (amoCRM's limit per account). Nothing is written when one fails.
2. ``amocrm``: the amoCRM source is created through the account's REST API (``waba`` and
   ``is_supports_list_message`` from the plugin's capabilities); skipped for an account
   without a REST token (then declare it by hand). A refusal stops here.
3. ``record``: the source is written to the store; every process starts it.
4. ``messenger``: the adapter's start in this process (it checks the token and registers the
   webhook, or starts long polling in one process of a fleet). A messenger that refuses the
   source leaves it recorded as ``failing`` with the reason; nothing else is affected.

Removing reverses them: the adapter is stopped and its webhook unregistered, the amoCRM source
deleted, the record removed. What an operator sees of a source or account never holds a secret
in full (:func:`shown_source`, :func:`shown_account`).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any, Literal, Protocol

import msgspec
import structlog

from .adapter import MessengerAdapter
from .amocrm import AmoCRMClient
from .config import validate_settings
from .errors import AmoconnectError, ConfigError, RegistryError
from .logging import redact, scrubber
from .registry import Registry, secrets_of
from .secretnames import is_secret
from .sources import amocrm_source
from .store.registry import AccountRecord, SourceRecord

__all__ = [
    "MAX_SOURCES",
    "CommandLineMessengers",
    "Messengers",
    "Outcome",
    "Refused",
    "SourceChange",
    "SourceSpec",
    "Step",
    "Tenants",
    "redacted",
    "shown_account",
    "shown_source",
]

log = structlog.get_logger("amoconnect.tenants")

MAX_SOURCES = 50
"""Sources amoCRM allows one account of an integration."""
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_EXTERNAL_ID = re.compile(r"^[\x20-\x7e]{1,40}$")


class SourceSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A source to add."""

    name: str
    """Instance name: lower-case letters, digits, ``-`` and ``_`` (it is a URL part)."""
    plugin: str
    external_id: str = ""
    """The amoCRM source's external id (1–40 printable ASCII); defaults to ``name``."""
    title: str = ""
    """The source's name in amoCRM; defaults to ``name``."""
    default: bool = False
    settings: dict[str, Any] = {}


class SourceChange(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """What to change of a source (absent: unchanged)."""

    title: str | None = None
    default: bool | None = None
    settings: dict[str, Any] | None = None


class Step(msgspec.Struct, frozen=True):
    """One step of an operation and how it went."""

    step: str
    outcome: Literal["done", "skipped", "failed"]
    detail: str = ""


class Outcome(msgspec.Struct):
    """An operation's steps and the source as it is now (None when gone or never written)."""

    ok: bool
    steps: list[Step]
    source: dict[str, Any] | None = None


class Refused(RegistryError):
    """The operation was refused before anything was written; ``status`` is the HTTP status it maps to."""

    def __init__(self, message: str, *, status: int = 400, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.problems = problems if problems is not None else [message]


class CommandLineMessengers:
    """:class:`Messengers` of a command run beside the connector: the running processes start and
    stop the adapters; a removal unregisters the source's webhook through ``unregister`` (the
    source's adapter, built here with its settings but not started)."""

    def __init__(self, unregister: Callable[[str], Awaitable[None]]) -> None:
        self._unregister = unregister

    def start_outcome(self, name: str) -> Step:
        return Step("messenger", "skipped", "the running connector starts it; `sources list` shows its state")

    async def unregister(self, name: str) -> Step:
        try:
            await self._unregister(name)
        except Exception as exc:
            log.warning("adapter unregister failed", source=name, error=_scrub(str(exc)))
            return Step("messenger", "failed", _scrub(f"{type(exc).__name__}: {exc}"))
        return Step("messenger", "done", "unregistered")


class Messengers(Protocol):
    """The adapters' side of an operation, in the process that runs it."""

    def start_outcome(self, name: str) -> Step:
        """After a source was recorded: whether its adapter started here (step ``messenger``)."""

    async def unregister(self, name: str) -> Step:
        """Before a source is removed: its adapter undoes what it registered with the messenger (step ``messenger``)."""


def redacted(value: Any, key: str = "") -> Any:
    """``value`` with every secret-like setting (token, secret, password, key, ...) cut to its last 4 characters."""
    if isinstance(value, dict):
        return {k: redacted(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [redacted(v, key) for v in value]
    if isinstance(value, str) and is_secret(key) and value:
        return f"…{value[-4:]}" if len(value) >= 12 else "…"
    return value


def shown_source(source: SourceRecord) -> dict[str, Any]:
    """A source as the operator sees it (secrets cut)."""
    shown: dict[str, Any] = msgspec.to_builtins(source)
    shown["settings"] = redacted(source.settings)
    return shown


def shown_account(account: AccountRecord) -> dict[str, Any]:
    """An account as the operator sees it (tokens cut)."""
    shown: dict[str, Any] = msgspec.to_builtins(account)
    for key in ("token", "refresh_token"):
        shown[key] = redacted(shown[key], key)
    return shown


def _scrub(text: str) -> str:
    """``text`` without the secrets this process knows (a messenger's error may quote a token)."""
    return scrubber(())(text)


class Tenants:
    """The operations, on ``registry``; ``messengers`` maps plugin names to adapters, ``rest`` gives an
    account's REST client (None: no REST calls), ``adapters`` reports this process's adapters."""

    def __init__(
        self,
        registry: Registry,
        messengers: dict[str, type[MessengerAdapter]],
        adapters: Messengers,
        rest: Callable[[AccountRecord], AmoCRMClient | None],
        *,
        on_disconnect: Callable[[AccountRecord], Awaitable[None]] | None = None,
    ) -> None:
        self.registry = registry
        self.messengers = messengers
        self.adapters = adapters
        self._rest = rest
        self._on_disconnect = on_disconnect

    # -- accounts --------------------------------------------------------------------------
    def rest(self, account: AccountRecord) -> AmoCRMClient | None:
        """The REST API client of ``account``; None when it has no token."""
        return self._rest(account)

    def account(self, name: str) -> AccountRecord:
        """The account called ``name`` (:class:`Refused` with 404 when there is none)."""
        account = self.registry.account(name)
        if account is None:
            raise Refused(f"no account named {name!r}", status=404)
        return account

    async def disconnect_account(self, name: str, *, reason: str = "disconnected by the operator") -> Outcome:
        """Disconnect a stored account: its sources' webhooks unregistered, the account marked
        disconnected (its sources stop in every process, its webhooks are refused), its queued jobs
        made dead letters with ``reason``, the channel disconnected from it in amojo. Again: nothing more."""
        account = self.account(name)
        if account.fixed:
            raise Refused(f"account {name!r} is fixed by the configuration file: remove it there", status=409)
        if account.state == "disconnected":
            return Outcome(True, [Step("account", "skipped", "already disconnected")])
        steps = [await self.adapters.unregister(source.name) for source in self.registry.sources(name)]
        await self.registry.set_account_state(name, "disconnected", reason)
        steps.append(Step("account", "done", "disconnected"))
        buried = await self.registry.bury_jobs_of(account.scope_id, f"account {name!r} {reason}")
        steps.append(Step("jobs", "done", f"{buried} queued job(s) made dead letters"))
        if self._on_disconnect is not None:
            try:
                await self._on_disconnect(account)
            except AmoconnectError as exc:
                steps.append(Step("amojo", "failed", _scrub(str(exc))))
            else:
                steps.append(Step("amojo", "done", "channel disconnected"))
        return Outcome(all(s.outcome != "failed" for s in steps), steps)

    # -- sources ---------------------------------------------------------------------------
    def source(self, name: str, *, account: str | None = None) -> SourceRecord:
        """The source called ``name`` (of ``account`` when given; another account's is not found)."""
        source = self.registry.source(name)
        if source is None or (account is not None and source.account != account):
            raise Refused(f"no source named {name!r}" + (f" in account {account!r}" if account else ""), status=404)
        return source

    def _check(self, account: AccountRecord, spec: SourceSpec) -> SourceRecord:
        problems: list[str] = []
        if not _NAME.match(spec.name):
            problems.append(f"name {spec.name!r} must be lower-case letters, digits, '-' or '_' (it is a URL part)")
        elif self.registry.source(spec.name) is not None:
            problems.append(f"name {spec.name!r} is taken")
        external_id = spec.external_id or spec.name
        if not _EXTERNAL_ID.match(external_id):
            problems.append(f"external_id {external_id!r} must be 1-40 printable ASCII characters")
        elif any(s.external_id == external_id for s in self.registry.sources(account.name)):
            problems.append(f"external_id {external_id!r} is taken in account {account.name!r}")
        cls = self.messengers.get(spec.plugin)
        if cls is None:
            installed = ", ".join(sorted(self.messengers)) or "none"
            problems.append(f"plugin {spec.plugin!r} is not installed; installed: {installed}")
        else:
            try:
                validate_settings(spec.settings, cls.settings, f"plugin {spec.plugin!r}")
            except ConfigError as exc:
                problems.extend(exc.problems)
        if spec.default and any(s.default for s in self.registry.sources(account.name)):
            problems.append(f"account {account.name!r} already has a default source")
        if problems:
            raise Refused("; ".join(problems), status=400, problems=problems)
        return SourceRecord(
            name=spec.name,
            plugin=spec.plugin,
            account=account.name,
            external_id=external_id,
            title=spec.title,
            default=spec.default,
            settings=spec.settings,
        )

    async def add_source(self, account_name: str, spec: SourceSpec) -> Outcome:
        """Add a source to an account, step by step (module docstring)."""
        for secret in secrets_of(spec.settings):
            redact(secret)  # before anything can log or answer an error quoting it
        account = self.account(account_name)
        if not account.active:
            raise Refused(f"account {account.name!r} is {account.state}", status=409)
        count = len(self.registry.sources(account.name))
        if count >= MAX_SOURCES:
            raise Refused(
                f"account {account.name!r} has {count} sources, the most amoCRM allows an integration "
                f"({MAX_SOURCES}); remove one first",
                status=409,
            )
        record = self._check(account, spec)
        steps = [Step("settings", "done")]
        rest = self._rest(account)
        if rest is None:
            steps.append(Step("amocrm", "skipped", "the account has no REST token: declare the source in amoCRM"))
        else:
            adapter = self.messengers.get(record.plugin)
            try:
                (created,) = await rest.create_sources([amocrm_source(record, adapter)])
            except AmoconnectError as exc:
                steps.append(Step("amocrm", "failed", _scrub(str(exc))))
                return Outcome(False, steps)
            record = msgspec.structs.replace(record, amocrm_source_id=created.id)
            steps.append(Step("amocrm", "done", f"source id {created.id}"))
        await self.registry.put_source(record)
        steps.append(Step("record", "done"))
        return await self._started(record, steps)

    async def _started(self, record: SourceRecord, steps: list[Step]) -> Outcome:
        step = self.adapters.start_outcome(record.name)
        step = Step(step.step, step.outcome, _scrub(step.detail))
        steps.append(step)
        if step.outcome != "failed":
            return Outcome(True, steps, shown_source(record))
        record = msgspec.structs.replace(record, state="failing", last_error=step.detail)
        await self.registry.put_source(record)
        return Outcome(False, steps, shown_source(record))

    async def change_source(self, name: str, change: SourceChange, *, account: str | None = None) -> Outcome:
        """Change a stored source's title, default flag or settings; it restarts with them everywhere."""
        source = self._stored(name, account)
        settings = source.settings if change.settings is None else change.settings
        cls = self.messengers.get(source.plugin)
        if cls is not None and change.settings is not None:
            for secret in secrets_of(change.settings):
                redact(secret)
            try:
                validate_settings(settings, cls.settings, f"plugin {source.plugin!r}")
            except ConfigError as exc:
                raise Refused("; ".join(exc.problems), problems=exc.problems) from None
        default = source.default if change.default is None else change.default
        if default and not source.default and any(s.default for s in self.registry.sources(source.account)):
            raise Refused(f"account {source.account!r} already has a default source", status=409)
        record = msgspec.structs.replace(
            source,
            title=source.title if change.title is None else change.title,
            default=default,
            settings=settings,
            state="active",
            last_error=None,
        )
        steps = [Step("settings", "done")]
        steps.append(await self._amocrm_update(source, record))
        await self.registry.put_source(record)
        steps.append(Step("record", "done"))
        return await self._started(record, steps)

    async def _amocrm_update(self, before: SourceRecord, after: SourceRecord) -> Step:
        account = self.account(after.account)
        rest = self._rest(account)
        if rest is None or after.amocrm_source_id is None:
            return Step("amocrm", "skipped", "no amoCRM source id or REST token")
        if (before.title, before.default) == (after.title, after.default):
            return Step("amocrm", "skipped", "nothing amoCRM keeps changed")
        wanted = msgspec.structs.replace(
            amocrm_source(after, self.messengers.get(after.plugin)), id=after.amocrm_source_id
        )
        try:
            await rest.update_sources([wanted])
        except AmoconnectError as exc:
            return Step("amocrm", "failed", str(exc))
        return Step("amocrm", "done")

    async def test_source(self, name: str, *, account: str | None = None) -> Outcome:
        """Start a source again (after its messenger refused it, or to check it); records the outcome."""
        source = self._stored(name, account)
        record = msgspec.structs.replace(source, state="active", last_error=None)
        await self.registry.put_source(record)
        return await self._started(record, [])

    async def remove_source(self, name: str, *, account: str | None = None) -> Outcome:
        """Remove a stored source: unregister its webhook, delete the amoCRM source, remove the record."""
        source = self._stored(name, account)
        steps = []
        steps.append(await self.adapters.unregister(name))
        owner = self.registry.account(source.account)
        rest = self._rest(owner) if owner is not None else None
        if rest is None or source.amocrm_source_id is None:
            steps.append(Step("amocrm", "skipped", "no amoCRM source id or REST token"))
        else:
            try:
                await rest.delete_sources([source.amocrm_source_id])
            except AmoconnectError as exc:
                steps.append(Step("amocrm", "failed", str(exc)))
            else:
                steps.append(Step("amocrm", "done"))
        await self.registry.remove_source(name)
        steps.append(Step("record", "done"))
        return Outcome(all(s.outcome != "failed" for s in steps), steps)

    def _stored(self, name: str, account: str | None) -> SourceRecord:
        source = self.source(name, account=account)
        if source.fixed:
            raise Refused(f"source {name!r} is fixed by the configuration file: change it there", status=409)
        return source
