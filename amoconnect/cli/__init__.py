"""The ``amoconnect`` command line.

Every command takes ``--log-level`` and ``--log-format`` (before or after its name), ``-h``
and ``--help``; each command's help ends with an example. The commands live by subject:
:mod:`.setup` (``init``, ``check``, ``migrate``), :mod:`.remote` (the commands that talk to
amoCRM), :mod:`.jobs` (the dead letters); serving and plugins are here.
"""

from __future__ import annotations

import importlib.metadata
import sys

import click

from .. import __version__
from ..plugins import BLOCK_ENV
from ..scaffold import new_plugin
from .common import blocked, config_option, echo_json, json_option, load, logging_options, run_async, setup_logging
from .jobs import jobs
from .remote import connect, disconnect, history, import_, link, sources
from .setup import check, init, migrate
from .tenants import accounts, sources_add, sources_list, sources_remove

__all__ = ["main"]


def _installed_plugins() -> list[tuple[str, str, str]]:
    """(entry point name, distribution, version) of each installed plugin, without importing any."""
    found = []
    for ep in importlib.metadata.entry_points(group="amoconnect"):
        dist = ep.dist
        found.append((ep.name, dist.name if dist else "?", dist.version if dist else "?"))
    return sorted(found)


def _print_version(ctx: click.Context, _: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    click.echo(f"amoconnect {__version__} (Python {sys.version.split()[0]})")
    plugins = _installed_plugins()
    click.echo("plugins:" if plugins else "plugins: none installed")
    for name, dist, version in plugins:
        click.echo(f"  {name} {version} ({dist})")
    ctx.exit()


@click.group(
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog='Shell completion (bash): eval "$(_AMOCONNECT_COMPLETE=bash_source amoconnect)"; zsh and fish: docs/cli.md.',
)
@click.option(
    "--block",
    "blocked",
    multiple=True,
    metavar="NAME",
    envvar=BLOCK_ENV,
    help=f"Never load the installed plugin NAME (repeatable; also {BLOCK_ENV}, [plugins] blocked).",
)
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_print_version,
    help="Show the version of amoconnect and of each installed plugin, and exit.",
)
def main(blocked: tuple[str, ...]) -> None:
    """Connect messengers to amoCRM / Kommo through the Chats API.

    \b
    Example:
      amoconnect init --plugin telegram
      amoconnect check
      amoconnect run
    """
    setup_logging()


@main.command()
@click.option("--plugin", "plugin", default=None, help="Run only this messenger plugin's instances.")
@config_option
@click.option("--host", default=None, help="Listen address (default: [server] host).")
@click.option("--port", default=None, type=int, help="Listen port (default: [server] port; sandbox: a free one).")
@click.option("--sandbox", is_flag=True, help="No credentials: a fake amoCRM and the plugin's fake messenger.")
@click.option(
    "--plugin-dir",
    "plugin_dirs",
    multiple=True,
    type=click.Path(file_okay=False, exists=True),
    help="Load every *.py in this directory as a plugin (repeatable).",
)
@click.option("--plugin-module", "plugin_modules", multiple=True, help="Load this module (pkg.mod) as a plugin.")
@click.option(
    "--rounds",
    default=0,
    show_default=True,
    help="Sandbox: run this many scripted conversations, then stop (0: none; serve the page until interrupted).",
)
@click.option("--no-browser", is_flag=True, help="Sandbox: do not open the page in a browser.")
def run(
    plugin: str | None,
    config_path: str,
    host: str | None,
    port: int | None,
    sandbox: bool,
    plugin_dirs: tuple[str, ...],
    plugin_modules: tuple[str, ...],
    rounds: int,
    no_browser: bool,
) -> None:
    """Serve webhooks and relay messages until SIGTERM/SIGINT.

    A port in use is a one-line error (exit 1) before anything starts.

    \b
    Example:
      amoconnect run --config /etc/amoconnect/amoconnect.toml
      amoconnect run --sandbox --plugin telegram --rounds 3
    """
    if sandbox:
        from ..sandbox import run_sandbox

        run_async(
            lambda: run_sandbox(
                plugin or "fake",
                host=host or "127.0.0.1",
                port=port,
                rounds=rounds,
                plugin_dirs=plugin_dirs,
                blocked=blocked(),
                open_browser=not no_browser,
            )
        )
        return
    from ..runtime import Runtime, loop_options, serve

    config = load(config_path)

    async def go() -> None:
        runtime = Runtime(config, plugin=plugin, plugin_dirs=plugin_dirs, extra_modules=plugin_modules)
        await serve(
            runtime,
            host=host or config.server.host,
            port=config.server.port if port is None else port,
            dedicated=True,
        )

    run_async(go, backend_options=loop_options())


@main.command()
@json_option("a list of {name, distribution, version, hooks, messengers}")
@click.option("--plugin-dir", "plugin_dirs", multiple=True, type=click.Path(file_okay=False, exists=True))
@click.option("--plugin-module", "plugin_modules", multiple=True, help="Load this module (pkg.mod) as a plugin.")
def plugins(as_json: bool, plugin_dirs: tuple[str, ...], plugin_modules: tuple[str, ...]) -> None:
    """List installed plugins, their versions, hooks and messenger declarations.

    \b
    Example:
      amoconnect plugins
      amoconnect plugins --json --plugin-dir ./my_plugins
    """
    from ..errors import AmoconnectError
    from ..plugins import describe_plugins, get_plugin_manager

    try:
        pm = get_plugin_manager(plugin_dirs=plugin_dirs, extra_modules=plugin_modules, blocked=blocked())
        described = describe_plugins(pm)
    except AmoconnectError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        echo_json(described)
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


for command in (init, check, migrate, connect, disconnect, sources, accounts, import_, history, link, jobs, new_plugin):
    main.add_command(command)
sources.add_command(sources_add)
sources.add_command(sources_remove)
sources.add_command(sources_list)


def _share_logging_options(command: click.Command) -> None:
    """Every command, groups included, takes ``--log-level`` and ``--log-format``."""
    command.params.extend(logging_options())
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            _share_logging_options(sub)


_share_logging_options(main)
