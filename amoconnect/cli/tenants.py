"""``amoconnect accounts list|show|disconnect`` and ``amoconnect sources add|remove|list``: the accounts and
sources kept in the store, through the same operations as the admin API (:mod:`amoconnect.tenants`).

A command runs beside the connector: it writes the store, and the running processes start and
stop the adapters within a second (their outcome shows in ``accounts show``). A removal (and a
disconnect) builds the source's adapter here, not started, to unregister its messenger webhook.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any, TypeVar

import click
import msgspec

from ..tenants import Outcome, Tenants
from .common import config_option, echo_json, json_option, load, run_async

__all__ = ["accounts", "sources_add", "sources_list", "sources_remove"]

if TYPE_CHECKING:
    from ..amocrm import Source
    from ..store.registry import AccountRecord

T = TypeVar("T")


def _with_tenants(config_path: str, fn: Callable[[Tenants], Awaitable[T]]) -> T:
    config = load(config_path)

    async def go() -> T:
        from ..amocrm import AmoCRMClient
        from ..runtime import Runtime

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


@click.command("list")
@config_option
@click.option("--account", "account_name", default=None, help="Only this account's sources.")
@json_option(
    "a list of {account, instance, plugin, kind, source_state, last_error, "
    "external_id, amocrm_id, name, default, state}"
)
def sources_list(config_path: str, account_name: str | None, as_json: bool) -> None:
    """Every source, the configuration file's (fixed) and the store's (run-time), beside amoCRM's sources.

    \b
    Example:
      amoconnect sources list --account shop
    """

    async def go(tenants: Tenants) -> list[dict[str, Any]]:
        accounts = [a for a in tenants.registry.accounts() if account_name in (None, a.name)]
        if account_name and not accounts:
            raise click.ClickException(f"no account named {account_name!r}")
        return [row for account in accounts for row in await _compared(tenants, account)]

    report = _with_tenants(config_path, go)
    if as_json:
        echo_json(report)
        return
    for row in report:
        where = f"{row['plugin']}/{row['instance']} ({row['kind']}, {row['source_state']})" if row["instance"] else "-"
        error = f": {row['last_error']}" if row["last_error"] else ""
        click.echo(
            f"{row['account']}: {row['external_id']!r} amoCRM id {row['amocrm_id']} {where} ({row['state']}){error}"
        )


async def _compared(tenants: Tenants, account: AccountRecord) -> list[dict[str, Any]]:
    """``account``'s sources here and in amoCRM, one row per external id."""
    from ..errors import AmoconnectError

    here = {s.external_id: s for s in tenants.registry.sources(account.name)}
    found: dict[str, Source] = {}
    rest = tenants.rest(account)
    asked = ""
    if rest is None:
        asked = "amoCRM not asked: no REST token"
    else:
        try:
            found = {s.external_id: s for s in await rest.list_sources()}
        except AmoconnectError as exc:
            asked = f"amoCRM not read: {exc}"
    rows = []
    for external_id in sorted(set(found) | set(here)):
        remote, local = found.get(external_id), here.get(external_id)
        state = asked or ("synced" if remote and local else "not in amoCRM" if local else "not configured")
        rows.append(
            {
                "account": account.name,
                "instance": local.name if local else None,
                "plugin": local.plugin if local else None,
                "kind": None if local is None else "fixed" if local.fixed else "run-time",
                "source_state": local.state if local else None,
                "last_error": local.last_error if local else None,
                "external_id": external_id,
                "amocrm_id": remote.id if remote else None,
                "name": remote.name if remote else None,
                "default": bool(remote.default) if remote else None,
                "state": state,
            }
        )
    return rows
