"""The commands that talk to amoCRM: ``connect``, ``disconnect``, ``sources``, ``import``, ``history``, ``link``."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from ..config import AccountConfig, Config
from ..errors import AmoconnectError
from .common import config_option, echo_json, json_option, load, run_async

if TYPE_CHECKING:
    from ..amojo.client import AmojoClient

__all__ = ["connect", "disconnect", "history", "import_", "link", "sources"]


def _amojo(config: Config) -> AmojoClient:
    """The channel's amojo client, for one command, as ``[http]`` says."""
    from ..amojo.client import AmojoClient
    from ..http import RetryPolicy

    return AmojoClient(
        config.channel.id,
        config.channel.secret,
        base_url=config.channel.amojo_url,
        transport=config.http.transport,
        retry=RetryPolicy(attempts=config.http.attempts),
        timeout=config.http.timeout,
        max_in_flight_per_host=config.http.max_in_flight_per_host,
    )


account_option = click.option(
    "--account", "account_name", default=None, help="Account name from the config (default: every account)."
)


def _accounts(config: Config, account_name: str | None) -> list[AccountConfig]:
    chosen = [a for a in config.accounts if account_name in (None, a.name)]
    if account_name and not chosen:
        raise click.ClickException(
            f"no account named {account_name!r} in {config.origin}; configured: "
            f"{', '.join(a.name for a in config.accounts) or 'none'}"
        )
    return chosen


@click.command()
@config_option
@account_option
@json_option("a list of {account, scope_id, configured_scope_id}")
def connect(config_path: str, account_name: str | None, as_json: bool) -> None:
    """Connect the channel to the configured accounts; prints each scope_id.

    \b
    Example:
      amoconnect connect
      amoconnect connect --account main --json
    """
    config = load(config_path)
    accounts = _accounts(config, account_name)

    async def go() -> list[dict[str, str]]:
        rows = []
        async with _amojo(config) as amojo:
            for account in accounts:
                answer = await amojo.connect(
                    account.amojo_id,
                    title=config.channel.title,
                    time_window_disabled=account.time_window_disabled or None,
                )
                rows.append(
                    {"account": account.name, "scope_id": answer.scope_id, "configured_scope_id": account.scope_id}
                )
        return rows

    rows = run_async(go)
    if as_json:
        echo_json(rows)
        return
    for row in rows:
        click.echo(f"{row['account']}: scope_id = {row['scope_id']}")
        if row["scope_id"] != row["configured_scope_id"]:
            click.echo(f'  note: set scope_id = "{row["scope_id"]}" for account {row["account"]!r} in the config')


@click.command()
@config_option
@account_option
def disconnect(config_path: str, account_name: str | None) -> None:
    """Disconnect the channel from the configured accounts.

    \b
    Example:
      amoconnect disconnect --account main
    """
    config = load(config_path)
    accounts = _accounts(config, account_name)

    async def go() -> None:
        async with _amojo(config) as amojo:
            for account in accounts:
                await amojo.disconnect(account.amojo_id)
                click.echo(f"{account.name}: disconnected")

    run_async(go)


@click.group()
def sources() -> None:
    """The messenger instances (sources): the file's and the store's, and amoCRM's of each account.

    \b
    Example:
      amoconnect sources sync
      amoconnect sources list --json
    """


def _rest_accounts(config: Config, account_name: str | None) -> list[AccountConfig]:
    chosen = _accounts(config, account_name)
    missing = [a.name for a in chosen if not (a.rest_url and a.token)]
    if missing:
        raise click.ClickException(f"accounts {missing} need subdomain (or rest_url) and token for the REST API")
    return chosen


@sources.command("sync")
@config_option
@account_option
def sources_sync(config_path: str, account_name: str | None) -> None:
    """Create or update each configured source in amoCRM (waba and list messages from the plugin).

    \b
    Example:
      amoconnect sources sync --account main
    """
    from ..amocrm import AmoCRMClient
    from ..plugins import collect_messengers, get_plugin_manager
    from ..sources import desired_sources, sync_sources

    config = load(config_path)
    accounts = _rest_accounts(config, account_name)

    async def go() -> None:
        messengers = collect_messengers(get_plugin_manager(blocked=config.plugins.blocked))
        for account in accounts:
            async with AmoCRMClient(account.rest_url, tokens=account.token) as rest:
                result = await sync_sources(rest, desired_sources(config, account, messengers))
            click.echo(
                f"{account.name}: created {result.created or '-'}, updated {result.updated or '-'}, "
                f"unchanged {result.unchanged or '-'}"
            )

    run_async(go)


@click.command("import")
@config_option
@click.option(
    "--file",
    "path",
    required=True,
    type=click.Path(dir_okay=False, exists=True),
    help="JSON lines, one old message a line (the format: docs/cli.md, 'History import').",
)
@json_option("{conversations, sent, already_there}")
def import_(config_path: str, path: str, as_json: bool) -> None:
    """Import old conversations: all silent but each conversation's newest message, in order, idempotently.

    An interrupted import can run again: what amoCRM already has is counted, not sent twice.

    \b
    Example:
      amoconnect import --file history.jsonl
    """
    from ..history import import_history, read_history

    config = load(config_path)
    try:
        entries = read_history(path)
    except AmoconnectError as exc:
        raise click.ClickException(str(exc)) from exc

    async def go() -> dict[str, int]:
        async with _amojo(config) as amojo:
            if as_json or not sys.stderr.isatty():
                result = await import_history(config, amojo, entries)
            else:
                with click.progressbar(length=len(entries), label="importing", file=sys.stderr) as bar:
                    result = await import_history(config, amojo, entries, progress=bar.update)
        return {"conversations": result.conversations, "sent": result.sent, "already_there": result.already_there}

    result = run_async(go)
    if as_json:
        echo_json(result)
        return
    click.echo(
        f"{result['conversations']} conversation(s): {result['sent']} message(s) sent, "
        f"{result['already_there']} already in amoCRM"
    )


@click.command()
@config_option
@click.option("--account", "account_name", required=True, help="Account name from the config.")
@click.option("--conversation", "conversation_id", default=None, help="Our conversation id (looked up in the store).")
@click.option("--chat", "chat_id", default=None, help="amoCRM's chat id (conversation.id of its webhooks).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines, one message a line.")
def history(
    config_path: str, account_name: str, conversation_id: str | None, chat_id: str | None, as_json: bool
) -> None:
    """Print a chat's messages as amoCRM keeps them, newest first (every page).

    amojo knows a chat by amoCRM's id of it only: --conversation finds that id in the store
    (learnt from amojo's answer to the conversation's first message, or a manager's webhook).

    \b
    Example:
      amoconnect history --account main --conversation support-bot:182736455
      amoconnect history --account main --chat 8c5e1c1a-0d6b-4b1c-9a0e-3a3c1c2f4d5e --json
    """
    import msgspec

    if (conversation_id is None) == (chat_id is None):
        raise click.UsageError("name the chat with either --conversation (ours) or --chat (amoCRM's chat id)")
    config = load(config_path)
    (account,) = _accounts(config, account_name)

    async def amocrm_chat_id(conversation: str) -> str:
        from ..store import opened_store

        async with opened_store(config.store) as store:
            record = await store.conversation(account.scope_id, conversation)
        if record is None:
            raise click.ClickException(
                f"no conversation {conversation!r} in account {account_name!r} (for amoCRM's chat id, use --chat)"
            )
        if record.amocrm_chat_id is None:
            raise click.ClickException(
                f"amoCRM's chat id of conversation {conversation!r} is not known yet: none of its messages has "
                "reached amoCRM and no manager has written in it, so amoCRM has no history of it"
            )
        return record.amocrm_chat_id

    async def go() -> int:
        count = 0
        chat = chat_id if chat_id is not None else await amocrm_chat_id(conversation_id or "")
        async with _amojo(config) as amojo:
            async for message in amojo.iter_history(account.scope_id, chat):
                count += 1
                if as_json:
                    click.echo(msgspec.json.encode(message).decode())
                    continue
                body = message.message
                who = (message.sender.name or message.sender.id) if message.sender else "?"
                when = message.timestamp or 0
                text = (body.text if body else "") or (f"[{body.type}] {body.media or ''}" if body else "")
                click.echo(f"{when} {who}: {text}")
        return count

    if run_async(go) == 0:
        named = f"conversation {conversation_id!r}" if chat_id is None else f"amoCRM chat {chat_id!r}"
        raise click.ClickException(
            f"amoCRM has no messages in {named} of account {account_name!r} (no such chat, or it is empty)"
        )


@click.command()
@config_option
@click.option("--account", "account_name", default=None, help="Account name (default: the only one).")
@click.option("--conversation", "conversation_id", required=True, help="Our conversation id.")
@click.option("--contact", "contact_id", required=True, type=int, help="The amoCRM contact id.")
def link(config_path: str, account_name: str | None, conversation_id: str, contact_id: int) -> None:
    """Attach an existing conversation to an amoCRM contact by hand.

    \b
    Example:
      amoconnect link --conversation support-bot:123456789 --contact 4242
    """
    from ..contacts import link_chat
    from ..store import opened_store

    config = load(config_path)
    accounts = _accounts(config, account_name)
    if len(accounts) != 1:
        raise click.ClickException("name the account with --account")
    account = accounts[0]
    if not (account.rest_url and account.token):
        raise click.ClickException(f"account {account.name!r} needs subdomain (or rest_url) and token")

    async def go() -> str:
        import msgspec

        from ..amocrm import AmoCRMClient
        from ..model import Person

        async with (
            opened_store(config.store) as store,
            _amojo(config) as amojo,
            AmoCRMClient(account.rest_url, tokens=account.token) as rest,
        ):
            record = await store.conversation(account.scope_id, conversation_id)
            if record is None:
                raise click.ClickException(f"no conversation {conversation_id!r} in account {account.name!r}")
            person = Person(id=record.client_id or record.chat)
            chat_id = await link_chat(amojo, rest, account.scope_id, record, person, contact_id)
            await store.put_conversation(msgspec.structs.replace(record, amocrm_chat_id=chat_id))
            return chat_id

    chat_id = run_async(go)
    click.echo(f"conversation {conversation_id} (amoCRM chat {chat_id}) is linked to contact {contact_id}")
