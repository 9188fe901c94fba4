"""The ``amoconnect`` command line."""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import click
import msgspec

from . import __version__
from .config import Config, load_config
from .errors import AmoconnectError
from .plugins import BLOCK_ENV
from .scaffold import new_plugin

if TYPE_CHECKING:
    from .amojo.client import AmojoClient

__all__ = ["main"]

T = TypeVar("T")

DEFAULT_CONFIG = "amoconnect.toml"


def _run(fn: Callable[[], Awaitable[T]], *, backend_options: dict[str, bool] | None = None) -> T:
    try:
        return anyio.run(fn, backend_options=backend_options)
    except AmoconnectError as exc:
        raise click.ClickException(str(exc)) from exc


def _config(path: str) -> Config:
    try:
        config = load_config(path)
    except AmoconnectError as exc:
        raise click.ClickException(str(exc)) from exc
    blocked = [*config.plugins.blocked, *_blocked()]
    return msgspec.structs.replace(config, plugins=msgspec.structs.replace(config.plugins, blocked=blocked))


def _blocked() -> tuple[str, ...]:
    """The plugins ``amoconnect --block NAME`` keeps from loading."""
    return tuple(click.get_current_context().find_root().params.get("blocked", ()))


def _amojo(config: Config) -> AmojoClient:
    """The channel's amojo client, for one command."""
    from .amojo.client import AmojoClient

    return AmojoClient(config.channel.id, config.channel.secret, base_url=config.channel.amojo_url)


def _configure_logging(config: Config | None, level: str | None = None) -> None:
    from .logging import configure

    configure(level=level or (config.log_level if config else "info"), secrets=config.secrets() if config else ())


config_option = click.option(
    "--config",
    "config_path",
    default=DEFAULT_CONFIG,
    show_default=True,
    type=click.Path(dir_okay=False),
    help="The TOML configuration file.",
)


@click.group()
@click.version_option(__version__, prog_name="amoconnect")
@click.option(
    "--block",
    "blocked",
    multiple=True,
    metavar="NAME",
    envvar=BLOCK_ENV,
    help=f"Never load the installed plugin NAME (repeatable; also {BLOCK_ENV}, [plugins] blocked).",
)
def main(blocked: tuple[str, ...]) -> None:
    """Connect messengers to amoCRM / Kommo through the Chats API."""


@main.command()
@click.option("--plugin", "plugin", default=None, help="Run only this messenger plugin's instances.")
@config_option
@click.option("--host", default=None, help="Listen address (default: [server] host).")
@click.option("--port", default=None, type=int, help="Listen port (default: [server] port).")
@click.option("--sandbox", is_flag=True, help="No credentials: a fake amoCRM and the plugin's fake messenger.")
@click.option(
    "--plugin-dir",
    "plugin_dirs",
    multiple=True,
    type=click.Path(file_okay=False, exists=True),
    help="Load every *.py in this directory as a plugin (repeatable).",
)
@click.option("--plugin-module", "plugin_modules", multiple=True, help="Load this module (pkg.mod) as a plugin.")
@click.option("--log-level", default=None, help="debug, info, warning or error.")
@click.option("--rounds", default=0, show_default=True, help="Sandbox: stop after this many conversations (0: never).")
def run(
    plugin: str | None,
    config_path: str,
    host: str | None,
    port: int | None,
    sandbox: bool,
    plugin_dirs: tuple[str, ...],
    plugin_modules: tuple[str, ...],
    log_level: str | None,
    rounds: int,
) -> None:
    """Serve webhooks and relay messages until SIGTERM/SIGINT."""
    if sandbox:
        from .sandbox import run_sandbox

        _configure_logging(None, log_level)
        _run(
            lambda: run_sandbox(
                plugin or "fake",
                host=host or "127.0.0.1",
                port=port or 8080,
                rounds=rounds,
                plugin_dirs=plugin_dirs,
                blocked=_blocked(),
            )
        )
        return
    from .runtime import Runtime, loop_options, serve

    config = _config(config_path)
    _configure_logging(config, log_level)

    async def go() -> None:
        runtime = Runtime(config, plugin=plugin, plugin_dirs=plugin_dirs, extra_modules=plugin_modules)
        await serve(runtime, host=host or config.server.host, port=port or config.server.port)

    _run(go, backend_options=loop_options())


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON: a list of {name, version, hooks, ...}.")
@click.option("--plugin-dir", "plugin_dirs", multiple=True, type=click.Path(file_okay=False, exists=True))
@click.option("--plugin-module", "plugin_modules", multiple=True, help="Load this module (pkg.mod) as a plugin.")
def plugins(as_json: bool, plugin_dirs: tuple[str, ...], plugin_modules: tuple[str, ...]) -> None:
    """List installed plugins, their versions, hooks and messenger declarations."""
    from .plugins import describe_plugins, get_plugin_manager

    try:
        pm = get_plugin_manager(plugin_dirs=plugin_dirs, extra_modules=plugin_modules, blocked=_blocked())
        described = describe_plugins(pm)
    except AmoconnectError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps(described, indent=2, ensure_ascii=False))
        return
    if not described:
        click.echo("no plugins installed")
    for entry in described:
        click.echo(f"{entry['name']} {entry.get('version') or ''}".rstrip())
        for messenger in entry.get("messengers", []):
            window = messenger.get("reply_window")
            click.echo(f"  messenger {messenger['name']}: {', '.join(messenger.get('capabilities', [])) or '-'}")
            click.echo(f"    reactions: {messenger.get('reactions')}; reply window: {window or 'none'}")
        hooks = [h for h in entry.get("hooks", []) if h != "register_messengers"]
        if hooks:
            click.echo(f"  hooks: {', '.join(hooks)}")


def _account_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--account", "account_name", default=None, help="Account name from the config (default: every account)."
    )(fn)


@main.command()
@config_option
@_account_option
def connect(config_path: str, account_name: str | None) -> None:
    """Connect the channel to the configured accounts; prints each scope_id."""
    config = _config(config_path)

    async def go() -> None:

        async with _amojo(config) as amojo:
            for account in config.accounts:
                if account_name and account.name != account_name:
                    continue
                answer = await amojo.connect(
                    account.amojo_id,
                    title=config.channel.title,
                    time_window_disabled=account.time_window_disabled or None,
                )
                click.echo(f"{account.name}: scope_id = {answer.scope_id}")
                if answer.scope_id != account.scope_id:
                    click.echo(f'  note: set scope_id = "{answer.scope_id}" for account {account.name!r} in the config')

    _run(go)


@main.command()
@config_option
@_account_option
def disconnect(config_path: str, account_name: str | None) -> None:
    """Disconnect the channel from the configured accounts."""
    config = _config(config_path)

    async def go() -> None:

        async with _amojo(config) as amojo:
            for account in config.accounts:
                if account_name and account.name != account_name:
                    continue
                await amojo.disconnect(account.amojo_id)
                click.echo(f"{account.name}: disconnected")

    _run(go)


@main.command()
@config_option
def migrate(config_path: str) -> None:
    """Bring the store's schema up to date (PostgreSQL is migrated only by this command)."""
    config = _config(config_path)

    async def go() -> tuple[str, list[int]]:
        from .store import migrate_store

        return await migrate_store(config.store)

    where, applied = _run(go)
    if applied:
        click.echo(f"{where}: applied schema version(s) {', '.join(map(str, applied))}")
    else:
        click.echo(f"{where}: schema is up to date")


@main.group()
def jobs() -> None:
    """The dead letters: jobs that ran out of attempts."""


def _with_store(config_path: str, fn: Callable[[Any], Awaitable[T]]) -> T:
    config = _config(config_path)

    async def go() -> T:
        from .store import opened_store

        async with opened_store(config.store) as store:
            return await fn(store)

    return _run(go)


@jobs.command("list")
@config_option
@click.option("--json", "as_json", is_flag=True)
@click.option("--limit", default=100, show_default=True)
def jobs_list(config_path: str, as_json: bool, limit: int) -> None:
    """Show dead letters and queue counts."""

    async def go(store: Any) -> None:
        dead = await store.dead_letters(limit)
        counts = await store.counts()
        if as_json:
            rows = [
                {
                    "id": d.id,
                    "kind": d.kind,
                    "key": d.key,
                    "scope_id": d.scope_id,
                    "attempts": d.attempts,
                    "failed_at": d.failed_at,
                    "error": d.error,
                }
                for d in dead
            ]
            click.echo(json.dumps({"counts": counts, "dead": rows}, indent=2))
            return
        click.echo(f"queued {counts['queued']}, running {counts['running']}, dead {counts['dead']}")
        for d in dead:
            click.echo(f"#{d.id} {d.kind} {d.key} attempts={d.attempts}: {d.error}")

    _with_store(config_path, go)


def _dead_letter_command(name: str, verb: str, help_text: str) -> None:
    """``jobs retry`` and ``jobs purge``: the same arguments, a different store call."""

    @jobs.command(name, help=help_text)
    @config_option
    @click.argument("ids", nargs=-1, type=int)
    @click.option("--all", "everything", is_flag=True, help=f"{name.capitalize()} every dead letter.")
    def command(config_path: str, ids: tuple[int, ...], everything: bool) -> None:
        if not ids and not everything:
            raise click.UsageError("name job ids, or pass --all")

        async def go(store: Any) -> None:
            action = store.requeue if name == "retry" else store.purge
            count = await action(None if everything else list(ids))
            click.echo(f"{verb} {count} job(s)")

        _with_store(config_path, go)


_dead_letter_command("retry", "re-queued", "Put dead letters back in the queue (a running connector picks them up).")
_dead_letter_command("purge", "purged", "Delete dead letters for good.")


@main.command()
@config_option
@click.option("--offline", is_flag=True, help="Only validate the file and plugins; reach no API.")
def check(config_path: str, offline: bool) -> None:
    """Validate the configuration and reach every configured API; exit 1 if anything is wrong."""
    from .checks import run_checks

    config = _config(config_path)
    problems = _run(lambda: run_checks(config, offline=offline))
    for line in problems:
        click.echo(f"problem: {line}", err=True)
    if problems:
        sys.exit(1)
    click.echo(f"{Path(config_path)}: ok")


@main.group()
def sources() -> None:
    """The amoCRM sources of the configured messenger instances."""


def _rest_accounts(config: Config, account_name: str | None) -> list[Any]:
    chosen = [a for a in config.accounts if account_name in (None, a.name)]
    if account_name and not chosen:
        raise click.ClickException(f"no account named {account_name!r} in the config")
    missing = [a.name for a in chosen if not (a.rest_url and a.token)]
    if missing:
        raise click.ClickException(f"accounts {missing} need subdomain (or rest_url) and token for the REST API")
    return chosen


@sources.command("sync")
@config_option
@_account_option
def sources_sync(config_path: str, account_name: str | None) -> None:
    """Create or update each configured source in amoCRM (waba and list messages from the plugin)."""
    from .amocrm import AmoCRMClient
    from .plugins import collect_messengers, get_plugin_manager
    from .sources import desired_sources, sync_sources

    config = _config(config_path)
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

    _run(go)


@sources.command("list")
@config_option
@_account_option
@click.option("--json", "as_json", is_flag=True)
def sources_list(config_path: str, account_name: str | None, as_json: bool) -> None:
    """Show amoCRM's sources of each account beside the configured ones."""
    from .amocrm import AmoCRMClient

    config = _config(config_path)
    accounts = _rest_accounts(config, account_name)

    async def go() -> None:
        report = []
        for account in accounts:
            async with AmoCRMClient(account.rest_url, tokens=account.token) as rest:
                found = {s.external_id: s for s in await rest.list_sources()}
            configured = {s.external_id: s for s in config.sources if s.account == account.name}
            for external_id in sorted(set(found) | set(configured)):
                remote, local = found.get(external_id), configured.get(external_id)
                report.append(
                    {
                        "account": account.name,
                        "external_id": external_id,
                        "amocrm_id": remote.id if remote else None,
                        "name": remote.name if remote else None,
                        "default": bool(remote.default) if remote else None,
                        "instance": local.name if local else None,
                        "plugin": local.plugin if local else None,
                        "state": "synced" if remote and local else "not in amoCRM" if local else "not configured",
                    }
                )
        if as_json:
            click.echo(json.dumps(report, indent=2, ensure_ascii=False))
            return
        for row in report:
            where = f"{row['plugin']}/{row['instance']}" if row["instance"] else "-"
            click.echo(
                f"{row['account']}: {row['external_id']!r} amoCRM id {row['amocrm_id']} {where} ({row['state']})"
            )

    _run(go)


@main.command("import")
@config_option
@click.option(
    "--file",
    "path",
    required=True,
    type=click.Path(dir_okay=False, exists=True),
    help="JSON lines of history entries (README: History import).",
)
def import_(config_path: str, path: str) -> None:
    """Import old conversations: all silent but each conversation's newest message, in order, idempotently."""
    from .history import import_history, read_history

    config = _config(config_path)
    try:
        entries = read_history(path)
    except AmoconnectError as exc:
        raise click.ClickException(str(exc)) from exc

    async def go() -> None:
        async with _amojo(config) as amojo:
            with click.progressbar(length=len(entries), label="importing", file=sys.stderr) as bar:
                result = await import_history(config, amojo, entries, progress=bar.update)
        click.echo(
            f"{result.conversations} conversation(s): {result.sent} message(s) sent, "
            f"{result.already_there} already in amoCRM"
        )

    _run(go)


@main.command()
@config_option
@click.option("--account", "account_name", required=True, help="Account name from the config.")
@click.option("--conversation", "conversation_id", default=None, help="Our conversation id (looked up in the store).")
@click.option("--chat", "chat_id", default=None, help="amoCRM's chat id (conversation.id of its webhooks).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines, one message a line.")
def history(
    config_path: str, account_name: str, conversation_id: str | None, chat_id: str | None, as_json: bool
) -> None:
    """Print a chat's messages as amoCRM keeps them, newest first (every page).

    amojo knows a chat by amoCRM's id of it only: ``--conversation`` finds that id in the store
    (learnt from amojo's answer to the conversation's first message, or a manager's webhook).
    """
    import msgspec

    if (conversation_id is None) == (chat_id is None):
        raise click.UsageError("name the chat with either --conversation (ours) or --chat (amoCRM's chat id)")
    config = _config(config_path)
    try:
        account = config.account(account_name)
    except AmoconnectError as exc:
        raise click.ClickException(str(exc)) from exc

    async def amocrm_chat_id(conversation: str) -> str:
        from .store import opened_store

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

    if _run(go) == 0:
        named = f"conversation {conversation_id!r}" if chat_id is None else f"amoCRM chat {chat_id!r}"
        raise click.ClickException(
            f"amoCRM has no messages in {named} of account {account_name!r} (no such chat, or it is empty)"
        )


@main.command()
@config_option
@click.option("--account", "account_name", default=None, help="Account name (default: the only one).")
@click.option("--conversation", "conversation_id", required=True, help="Our conversation id.")
@click.option("--contact", "contact_id", required=True, type=int, help="The amoCRM contact id.")
def link(config_path: str, account_name: str | None, conversation_id: str, contact_id: int) -> None:
    """Attach an existing conversation to an amoCRM contact by hand."""
    from .contacts import link_chat
    from .store import opened_store

    config = _config(config_path)
    accounts = [a for a in config.accounts if account_name in (None, a.name)]
    if len(accounts) != 1:
        raise click.ClickException("name the account with --account")
    account = accounts[0]

    if not (account.rest_url and account.token):
        raise click.ClickException(f"account {account.name!r} needs subdomain (or rest_url) and token")

    async def go() -> str:
        import msgspec

        from .amocrm import AmoCRMClient
        from .model import Person

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

    chat_id = _run(go)
    click.echo(f"conversation {conversation_id} (amoCRM chat {chat_id}) is linked to contact {contact_id}")


main.add_command(new_plugin)
