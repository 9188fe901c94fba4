"""What every command shares: the configuration file, logging, running a coroutine, printing JSON."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
import click
import msgspec

from ..config import LOG_LEVELS, Config, load_config
from ..errors import AmoconnectError
from ..logging import configure, name_account, scrubber

__all__ = [
    "DEFAULT_CONFIG",
    "blocked",
    "config_option",
    "echo_json",
    "json_option",
    "load",
    "logging_options",
    "run_async",
    "scrub",
    "setup_logging",
]

T = TypeVar("T")

DEFAULT_CONFIG = "amoconnect.toml"

config_option = click.option(
    "--config",
    "config_path",
    default=DEFAULT_CONFIG,
    show_default=True,
    type=click.Path(dir_okay=False),
    help="The TOML configuration file.",
)


def json_option(what: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--json``: print ``what`` as JSON on stdout instead of lines for a person."""
    return click.option("--json", "as_json", is_flag=True, help=f"Print JSON: {what}.")


def _state() -> dict[str, Any]:
    """The logging choices of this invocation: from the command line, then from the configuration."""
    root = click.get_current_context().find_root()
    state: dict[str, Any] = root.meta.setdefault(
        "amoconnect.logging", {"level": None, "format": None, "config_level": None, "secrets": []}
    )
    return state


def setup_logging() -> None:
    """(Re)configure logging from what is known so far: ``--log-level`` over the file's ``log_level``."""
    state = _state()
    fmt = state["format"]
    configure(
        level=state["level"] or state["config_level"] or "info",
        json=None if fmt is None else fmt == "json",
        secrets=state["secrets"],
    )


def _remember(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is not None and not ctx.resilient_parsing:
        _state()[str(param.name)] = value.lower()
        setup_logging()


def logging_options() -> list[click.Option]:
    """``--log-level`` and ``--log-format``; every command takes them (before or after its name)."""
    return [
        click.Option(
            ["--log-level", "level"],
            type=click.Choice(LOG_LEVELS, case_sensitive=False),
            envvar="AMOCONNECT_LOG_LEVEL",
            expose_value=False,
            callback=_remember,
            help="Least important lines shown (default: the file's log_level, else info).",
        ),
        click.Option(
            ["--log-format", "format"],
            type=click.Choice(["console", "json"], case_sensitive=False),
            envvar="AMOCONNECT_LOG_FORMAT",
            expose_value=False,
            callback=_remember,
            help="Log lines for a person or JSON lines (default: console on a terminal, else json).",
        ),
    ]


def blocked() -> tuple[str, ...]:
    """The plugins ``amoconnect --block NAME`` keeps from loading."""
    return tuple(click.get_current_context().find_root().params.get("blocked", ()))


def load(path: str) -> Config:
    """The configuration at ``path``, with the plugins ``--block`` names among ``[plugins] blocked``;
    its log level, secrets and account names join the logging set-up."""
    try:
        config = load_config(path)
    except AmoconnectError as exc:
        raise click.ClickException(str(exc)) from exc
    config = msgspec.structs.replace(
        config, plugins=msgspec.structs.replace(config.plugins, blocked=[*config.plugins.blocked, *blocked()])
    )
    _state().update(config_level=config.log_level, secrets=config.secrets())
    for account in config.accounts:
        name_account(account.scope_id, account.name)
    setup_logging()
    return config


def scrub(text: str) -> str:
    """``text`` with the configured secrets replaced, for anything a command prints."""
    return scrubber(_state()["secrets"])(text)


def run_async(fn: Callable[[], Awaitable[T]], *, backend_options: dict[str, bool] | None = None) -> T:
    """Run ``fn`` in an event loop; an amoconnect error becomes a one-line error, secrets scrubbed."""
    try:
        return anyio.run(fn, backend_options=backend_options)
    except AmoconnectError as exc:
        raise click.ClickException(scrub(str(exc))) from exc


def echo_json(data: Any) -> None:
    """``data`` as indented JSON on stdout."""
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))
