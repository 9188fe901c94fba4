"""``amoconnect init``, ``check`` and ``migrate``: setting a deployment up."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..errors import AmoconnectError, ConfigError
from .common import DEFAULT_CONFIG, blocked, config_option, echo_json, json_option, load, run_async, scrub
from .starter import starter_config

__all__ = ["check", "init", "migrate"]


@click.command()
@click.option(
    "--plugin", "plugin", default=None, help="The messenger plugin of the first source (default: the only one)."
)
@click.option(
    "--config",
    "config_path",
    default=DEFAULT_CONFIG,
    show_default=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the file.",
)
@click.option("--force", is_flag=True, help="Overwrite the file if it exists.")
def init(plugin: str | None, config_path: Path, force: bool) -> None:
    """Write a commented starter amoconnect.toml for one messenger plugin.

    Secrets and ids are read from environment variables it names ("env:NAME"); `amoconnect check
    --offline` then lists the ones still unset.

    \b
    Example:
      amoconnect init --plugin telegram
      amoconnect init --plugin whatsapp --config /etc/amoconnect/amoconnect.toml
    """
    from ..plugins import collect_messengers, get_plugin_manager

    if config_path.exists() and not force:
        raise click.ClickException(f"{config_path} exists; pass --force to overwrite it")
    try:
        messengers = collect_messengers(get_plugin_manager(blocked=blocked()))
    except AmoconnectError as exc:
        raise click.ClickException(str(exc)) from exc
    if plugin is None:
        real = sorted(name for name in messengers if name != "fake")
        if len(real) != 1:
            raise click.UsageError(f"name the messenger with --plugin: one of {', '.join(sorted(messengers))}")
        plugin = real[0]
    cls = messengers.get(plugin)
    if cls is None:
        raise click.ClickException(
            f"no messenger plugin named {plugin!r} is installed; installed: {', '.join(sorted(messengers)) or 'none'}"
        )
    try:
        config_path.write_text(starter_config(plugin, cls.settings), encoding="utf-8")
    except OSError as exc:
        raise click.ClickException(f"cannot write {config_path}: {exc.strerror}") from exc
    click.echo(f"wrote {config_path} for {plugin}")
    click.echo("Next: set the environment variables it names, fill in the rest, then:")
    click.echo(f"  amoconnect check --config {config_path}")


@click.command()
@config_option
@click.option("--offline", is_flag=True, help="Only validate the file and plugins; reach no API.")
@json_option("{config, ok, problems: [...]}")
def check(config_path: str, offline: bool, as_json: bool) -> None:
    """Validate the configuration and reach every configured API; exit 1 if anything is wrong.

    It changes nothing: the store is only read (a SQLite file not there yet is not created),
    amoCRM gets read requests.

    \b
    Example:
      amoconnect check --offline
      amoconnect check --config /etc/amoconnect/amoconnect.toml --json
    """
    from ..checks import run_checks

    try:
        config = load(config_path)
    except click.ClickException as exc:
        if not as_json:
            raise
        cause = exc.__cause__
        problems = cause.problems if isinstance(cause, ConfigError) else [exc.message]
        echo_json({"config": config_path, "ok": False, "problems": problems})
        sys.exit(1)
    problems = [scrub(line) for line in run_async(lambda: run_checks(config, offline=offline))]
    if as_json:
        echo_json({"config": config_path, "ok": not problems, "problems": problems})
    else:
        for line in problems:
            click.echo(f"problem: {line}", err=True)
        if not problems:
            click.echo(f"{config_path}: ok")
    if problems:
        sys.exit(1)


@click.command()
@config_option
@json_option("{store, applied: [versions]}")
def migrate(config_path: str, as_json: bool) -> None:
    """Bring the store's schema up to date (PostgreSQL is migrated only by this command).

    \b
    Example:
      amoconnect migrate --config /etc/amoconnect/amoconnect.toml
    """
    config = load(config_path)

    async def go() -> tuple[str, list[int]]:
        from ..store import migrate_store

        return await migrate_store(config.store)

    where, applied = run_async(go)
    if as_json:
        echo_json({"store": where, "applied": applied})
    elif applied:
        click.echo(f"{where}: applied schema version(s) {', '.join(map(str, applied))}")
    else:
        click.echo(f"{where}: schema is up to date")
