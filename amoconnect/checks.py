"""``amoconnect check``: validate the configuration and reach every configured API.

It changes nothing: the store is only read (a SQLite file that does not exist yet is not
created), and amojo and the REST API get read requests.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from .amocrm import AmoCRMClient
from .amojo.client import AmojoClient
from .config import Config
from .errors import AmoconnectError, ConfigError, RemoteError
from .http import RetryPolicy
from .plugins import collect_messengers, get_plugin_manager
from .store import build_store

__all__ = ["run_checks"]

_PROBE_CHAT = "amoconnect-check"


async def run_checks(config: Config, *, offline: bool = False) -> list[str]:
    """Problems found, one readable line each (empty when all is well)."""
    problems: list[str] = []
    try:
        messengers = collect_messengers(get_plugin_manager(blocked=config.plugins.blocked))
    except AmoconnectError as exc:
        return [f"plugins: {exc}"]
    for index, source in enumerate(config.sources):
        cls = messengers.get(source.plugin)
        if cls is None:
            problems.append(f"{config.origin}: sources[{index}].plugin: {source.plugin!r} is not installed")
            continue
        try:
            config.plugin_settings(index, cls.settings)
        except ConfigError as exc:
            problems.extend(f"{config.origin}: {problem}" for problem in exc.problems)
    if offline:
        return problems
    problems.extend(await _check_store(config))
    once = RetryPolicy(attempts=1)
    async with AmojoClient(
        config.channel.id, config.channel.secret, base_url=config.channel.amojo_url, retry=once
    ) as amojo:
        for account in config.accounts:
            # A signed read of a chat that does not exist: 204 proves the secret and the scope.
            try:
                await amojo.get_history(account.scope_id, _PROBE_CHAT, limit=1)
            except RemoteError as exc:
                problems.append(f"account {account.name!r}: {_amojo_problem(config, account.scope_id, exc)}")
            if not account.rest_url or not account.token:
                continue
            async with AmoCRMClient(account.rest_url, tokens=account.token, retry=once) as rest:
                try:
                    amojo_id = await rest.get_account_amojo_id()
                except RemoteError as exc:
                    problems.append(f"account {account.name!r}: {_rest_problem(account.rest_url, exc)}")
                    continue
                except AmoconnectError as exc:
                    problems.append(f"account {account.name!r}: amoCRM's REST API at {account.rest_url}: {exc}")
                    continue
                if amojo_id != account.amojo_id:
                    problems.append(
                        f"account {account.name!r}: amojo_id is {account.amojo_id!r} in the config "
                        f"but {amojo_id!r} in amoCRM"
                    )
    return problems


def _unreachable(exc: RemoteError) -> str:
    """Why no answer came: the transport error behind ``exc``."""
    cause = exc.__cause__
    if cause is None:
        return str(exc)
    return f"{type(cause).__name__}: {cause}" if str(cause) else type(cause).__name__


def _amojo_problem(config: Config, scope_id: str, exc: RemoteError) -> str:
    url = config.channel.amojo_url
    what = "a signed request for a chat's history (it proves channel.secret and the account's scope)"
    if exc.status is None:
        return f"amojo at {url} did not answer {what}: {_unreachable(exc)}"
    if exc.status == 403:
        return f"amojo at {url} refused the signature of a signed request for a chat's history: check channel.secret"
    if exc.status == 404:
        return f"amojo at {url} does not know scope {scope_id!r}: run amoconnect connect"
    return f"amojo at {url} answered {what} with HTTP {exc.status}: {exc.body}"


def _rest_problem(url: str, exc: RemoteError) -> str:
    what = "a request for the account's amojo_id"
    if exc.status is None:
        return f"amoCRM's REST API at {url} did not answer {what}: {_unreachable(exc)}"
    if exc.status == 401:
        return f"amoCRM's REST API at {url} refused the token (HTTP 401): check the account's token"
    return f"amoCRM's REST API at {url} answered {what} with HTTP {exc.status}: {exc.body}"


async def _check_store(config: Config) -> list[str]:
    """The store is reachable and its schema is this version; nothing is created or changed."""
    if not config.store.url:
        return _check_sqlite(Path(config.store.path))
    from .store.postgres import SCHEMA_VERSION, PostgresStore

    store = build_store(config.store)
    assert isinstance(store, PostgresStore)
    try:
        version = await store.schema_version()
    except AmoconnectError as exc:
        return [f"store: {exc}"]
    if version != SCHEMA_VERSION:
        fix = "run amoconnect migrate" if version < SCHEMA_VERSION else "upgrade amoconnect"
        return [f"store: {store.where} has schema version {version}, this amoconnect needs {SCHEMA_VERSION}: {fix}"]
    return []


def _check_sqlite(path: Path) -> list[str]:
    from .store.sqlite import SCHEMA_VERSION

    if not path.exists():
        existing = next(p for p in path.absolute().parents if p.exists())
        if not os.access(existing, os.W_OK):
            return [f"store: {path} does not exist and cannot be created: {existing} is not writable"]
        return []  # amoconnect run (or migrate) creates it
    try:
        conn = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)
        try:
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        return [f"store: {path} is not a readable amoconnect SQLite store: {exc}"]
    version = int(row[0]) if row else 0
    if version > SCHEMA_VERSION:
        return [f"store: {path} has schema version {version}, newer than this amoconnect ({SCHEMA_VERSION})"]
    return []
