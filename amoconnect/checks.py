"""``amoconnect check``: validate the configuration and reach every configured API."""

from __future__ import annotations

from .amocrm import AmoCRMClient
from .amojo.client import AmojoClient
from .config import Config
from .errors import AmoconnectError, AmojoError, ConfigError
from .http import RetryPolicy
from .plugins import collect_messengers, get_plugin_manager
from .store import opened_store

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
            problems.append(f"source {source.name!r}: plugin {source.plugin!r} is not installed")
            continue
        try:
            config.plugin_settings(index, cls.settings)
        except ConfigError as exc:
            problems.extend(f"{config.origin}: source {source.name!r}: {p}" for p in exc.problems)
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
            except AmojoError as exc:
                if exc.status == 403:
                    problems.append(f"account {account.name!r}: amojo refused the signature: check channel.secret")
                elif exc.status == 404:
                    problems.append(
                        f"account {account.name!r}: amojo does not know scope {account.scope_id!r}; "
                        "run amoconnect connect"
                    )
                else:
                    problems.append(f"account {account.name!r}: amojo: {exc}")
            if not account.rest_url or not account.token:
                continue
            async with AmoCRMClient(account.rest_url, tokens=account.token, retry=once) as rest:
                try:
                    amojo_id = await rest.get_account_amojo_id()
                except AmoconnectError as exc:
                    problems.append(f"account {account.name!r}: amoCRM REST API: {exc}")
                    continue
                if amojo_id != account.amojo_id:
                    problems.append(
                        f"account {account.name!r}: amojo_id is {account.amojo_id!r} in the config "
                        f"but {amojo_id!r} in amoCRM"
                    )
    return problems


async def _check_store(config: Config) -> list[str]:
    """The store opens (reachable, schema at this version) and answers."""
    try:
        async with opened_store(config.store) as store:
            await store.counts()
    except AmoconnectError as exc:
        return [f"store: {exc}"]
    return []
