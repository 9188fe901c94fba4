"""``amoconnect accounts list|show|disconnect`` and ``amoconnect sources add|remove``: the accounts and
sources kept in the store, through the same operations as the admin API (:mod:`amoconnect.tenants`).

A command runs beside the connector: it writes the store, and the running processes start and
stop the adapters within a second (their outcome shows in ``accounts show``). A removal (and a
disconnect) builds the source's adapter here, not started, to unregister its messenger webhook.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any, TypeVar

import click
import msgspec

from ..tenants import Outcome, Tenants
from .common import config_option, echo_json, json_option, load, run_async

__all__ = ["accounts", "sources_add", "sources_remove"]

T = TypeVar("T")


def _with_tenants(config_path: str, fn: Callable[[Tenants], Awaitable[T]]) -> T:
    config = load(config_path)

    async def go() -> T:
        from ..amocrm import AmoCRMClient
        from ..runtime import Runtime
        from ..store.registry import AccountRecord

        async with AsyncExitStack() as stack:
            clients: dict[str, AmoCRMClient] = {}

            def rest(account: AccountRecord) -> AmoCRMClient | None:
                if not (account.token and account.rest_url):
                    return None
                if account.name not in clients:
                    clients[account.name] = AmoCRMClient(account.rest_url, tokens=account.token)
                    stack.push_async_callback(clients[account.name].aclose)
                return clients[account.name]

            tenants = await stack.enter_async_context(Runtime(config).beside(rest))
            return await fn(tenants)

    return run_async(go)


def _report(outcome: Outcome, as_json: bool) -> None:
    if as_json:
        echo_json(msgspec.to_builtins(outcome))
    else:
        for step in outcome.steps:
            click.echo(f"{step.step}: {step.outcome}{': ' + step.detail if step.detail else ''}")
    if not outcome.ok:
        raise SystemExit(1)


@click.group()
def accounts() -> None:
    """The amoCRM accounts: the configuration's (fixed) and those kept in the store.

    \b
    Example:
      amoconnect accounts list
      amoconnect accounts show shop --json
      amoconnect accounts disconnect shop
      amoconnect accounts reseal
    """


@accounts.command("list")
@config_option
@json_option("a list of accounts {name, amojo_id, scope_id, state, fixed, ...}, tokens cut")
def accounts_list(config_path: str, as_json: bool) -> None:
    """List the accounts with their state.

    \b
    Example:
      amoconnect accounts list --json
    """
    from ..tenants import shown_account

    async def go(tenants: Tenants) -> list[dict[str, Any]]:
        return [shown_account(a) for a in tenants.registry.accounts()]

    found = _with_tenants(config_path, go)
    if as_json:
        echo_json(found)
        return
    for account in found:
        fixed = " (fixed)" if account["fixed"] else ""
        click.echo(f"{account['name']}{fixed}: {account['state']}, scope {account['scope_id']}")


@accounts.command("show")
@click.argument("name")
@config_option
@json_option("{account, sources}, secrets cut")
def accounts_show(name: str, config_path: str, as_json: bool) -> None:
    """Show an account and its sources (state and last error of each).

    \b
    Example:
      amoconnect accounts show shop
    """
    from ..tenants import shown_account, shown_source

    async def go(tenants: Tenants) -> dict[str, Any]:
        account = tenants.account(name)
        return {
            "account": shown_account(account),
            "sources": [shown_source(s) for s in tenants.registry.sources(account.name)],
        }

    found = _with_tenants(config_path, go)
    if as_json:
        echo_json(found)
        return
    account = found["account"]
    click.echo(f"{account['name']}: {account['state']}, {account['subdomain']}.{account['domain']}")
    for source in found["sources"]:
        error = f" ({source['last_error']})" if source["last_error"] else ""
        click.echo(f"  {source['name']} [{source['plugin']}] {source['external_id']}: {source['state']}{error}")


@accounts.command("disconnect")
@click.argument("name")
@config_option
def accounts_disconnect(name: str, config_path: str) -> None:
    """Mark a stored account disconnected: its sources stop and its webhooks are refused, in every process.

    \b
    Example:
      amoconnect accounts disconnect shop
    """

    async def go(tenants: Tenants) -> None:
        await tenants.disconnect_account(name)

    _with_tenants(config_path, go)
    click.echo(f"{name}: disconnected")


@accounts.command("reseal")
@config_option
def accounts_reseal(config_path: str) -> None:
    """Encrypt every stored account's and source's secrets again with the first of [store] secret_keys.

    To rotate: put a new key first in secret_keys (keep the old one after it), restart, run this,
    then drop the old key.

    \b
    Example:
      amoconnect accounts reseal
    """

    async def go(tenants: Tenants) -> int:
        return await tenants.registry.reseal()

    click.echo(f"{_with_tenants(config_path, go)} records sealed with the first key")


@click.command("add")
@click.option("--account", "account_name", required=True, help="The account the source belongs to.")
@click.option("--name", required=True, help="Instance name (lower-case letters, digits, - and _).")
@click.option("--plugin", required=True, help="The messenger plugin.")
@click.option("--external-id", default="", help="amoCRM's external id of the source (default: the name).")
@click.option("--title", default="", help="The source's name in amoCRM (default: the name).")
@click.option("--default", "is_default", is_flag=True, help="Make it the account's default source.")
@click.option("--settings", "settings_json", default="{}", help="The plugin's settings as JSON, or @FILE.")
@config_option
@json_option("{ok, steps: [{step, outcome, detail}], source}")
def sources_add(
    account_name: str,
    name: str,
    plugin: str,
    external_id: str,
    title: str,
    is_default: bool,
    settings_json: str,
    config_path: str,
    as_json: bool,
) -> None:
    """Add a source kept in the store: settings checked, amoCRM source created, recorded (exit 1 if a step failed).

    \b
    Example:
      amoconnect sources add --account shop --name shop-bot --plugin telegram --settings @bot.json
    """
    from ..tenants import SourceSpec

    text = settings_json
    if text.startswith("@"):
        try:
            with open(text[1:], encoding="utf-8") as file:
                text = file.read()
        except OSError as exc:
            raise click.BadParameter(f"cannot read {text[1:]}: {exc.strerror}", param_hint="--settings") from None
    try:
        settings = json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--settings") from None
    if not isinstance(settings, dict):
        raise click.BadParameter("expected a JSON object", param_hint="--settings")
    spec = SourceSpec(
        name=name, plugin=plugin, external_id=external_id, title=title, default=is_default, settings=settings
    )

    async def go(tenants: Tenants) -> Outcome:
        return await tenants.add_source(account_name, spec)

    _report(_with_tenants(config_path, go), as_json)


@click.command("remove")
@click.argument("name")
@click.option("--account", "account_name", required=True, help="The account the source belongs to.")
@config_option
@json_option("{ok, steps: [{step, outcome, detail}]}")
def sources_remove(name: str, account_name: str, config_path: str, as_json: bool) -> None:
    """Remove a source kept in the store: the amoCRM source deleted, the record removed.

    \b
    Example:
      amoconnect sources remove shop-bot --account shop
    """

    async def go(tenants: Tenants) -> Outcome:
        return await tenants.remove_source(name, account=account_name)

    _report(_with_tenants(config_path, go), as_json)
