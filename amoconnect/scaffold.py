"""``amoconnect new-plugin``: a new messenger plugin distribution from amoconnect's cookiecutter template.

The template (``plugin_template/`` in the source tree, ``amoconnect/_plugin_template`` in a
wheel) asks for the messenger's name, the package's name, the author and the capabilities to
start with, and renders a pip-installable project whose adapter implements every declared
capability against an example fake messenger, with tests (the conformance suite among them)
that pass out of the box. Plain ``cookiecutter plugin_template`` renders the same. Rendering
needs ``cookiecutter``, which is not one of amoconnect's own dependencies.
"""

from __future__ import annotations

import importlib
import importlib.resources
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import click

from . import __version__
from .capabilities import Capability
from .errors import AmoconnectError

__all__ = ["CAPABILITY_PREFIX", "new_plugin", "render_plugin", "template_dir"]

CAPABILITY_PREFIX: Final = "with_"
"""The template asks for capability ``media`` as the yes/no variable ``with_media``."""
_MISSING = "amoconnect new-plugin needs cookiecutter: python -m pip install 'cookiecutter>=2.6'"
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9 _-]{0,31}\Z")


def template_dir() -> Path:
    """Where the plugin template is: inside the installed package, else beside it in a source checkout."""
    packaged = importlib.resources.files("amoconnect") / "_plugin_template"
    if packaged.is_dir():
        return Path(str(packaged))
    source = Path(__file__).resolve().parent.parent / "plugin_template"
    if (source / "cookiecutter.json").is_file():
        return source
    raise AmoconnectError(f"amoconnect's plugin template is missing (looked in {packaged} and {source}); reinstall")


def render_plugin(
    name: str,
    output_dir: Path | str = ".",
    *,
    capabilities: Sequence[str] | None = None,
    context: dict[str, Any] | None = None,
    interactive: bool = False,
    overwrite: bool = False,
    config_file: str | None = None,
) -> Path:
    """Render the template for messenger ``name`` into ``output_dir``; the new project's directory.

    ``capabilities`` are exactly the ones to declare (the template's defaults when ``None``);
    ``context`` sets other template variables (``package_name``, ``author_name``, ...).
    ``interactive`` prompts for what is not given. Raises :class:`AmoconnectError` when
    cookiecutter is missing, a name is refused or the directory exists (without ``overwrite``).
    """
    if not _NAME.match(name):
        raise AmoconnectError(
            f"messenger name {name!r} must be 1-32 letters, digits, spaces, '_' and '-', starting with a letter"
        )
    try:
        main = importlib.import_module("cookiecutter.main")
        exceptions = importlib.import_module("cookiecutter.exceptions")
    except ImportError as exc:
        raise AmoconnectError(_MISSING) from exc
    extra: dict[str, Any] = {"messenger_name": name, "__amoconnect_version": __version__, **(context or {})}
    if capabilities is not None:
        unknown = sorted(set(capabilities) - {str(capability) for capability in Capability})
        if unknown:
            raise AmoconnectError(f"unknown capabilities {unknown}; known: {', '.join(Capability)}")
        extra.update({CAPABILITY_PREFIX + str(c): str(c) in capabilities for c in Capability})
    quiet = logging.getLogger("cookiecutter")  # it logs a traceback for a refused name; the hook said why
    level, quiet.level = quiet.level, logging.CRITICAL
    try:
        rendered = main.cookiecutter(
            str(template_dir()),
            no_input=not interactive,
            extra_context=extra,
            output_dir=str(output_dir),
            overwrite_if_exists=overwrite,
            config_file=config_file,
        )
    except exceptions.OutputDirExistsException as exc:
        text = str(exc).removeprefix("Error: ")
        raise AmoconnectError(f"{text}; choose another --output-dir, or pass --overwrite") from exc
    except exceptions.FailedHookException as exc:
        raise AmoconnectError(f"the template refused the names given (its errors are above): {exc}") from exc
    finally:
        quiet.level = level
    return Path(rendered)


@click.command("new-plugin")
@click.argument("name")
@click.option(
    "--output-dir",
    "-o",
    default=".",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where to create the project's directory.",
)
@click.option(
    "--capability",
    "-c",
    "capabilities",
    multiple=True,
    type=click.Choice([str(capability) for capability in Capability]),
    help="A capability to start with (repeatable); without any, the template's defaults.",
)
@click.option("--package", default=None, help="The Python package's name (default: amoconnect_<name>).")
@click.option("--author", default=None, help="The author's name.")
@click.option("--email", default=None, help="The author's e-mail.")
@click.option("--interactive", "-i", is_flag=True, help="Ask for everything not given on the command line.")
@click.option("--overwrite", is_flag=True, help="Render into an existing project directory.")
def new_plugin(
    name: str,
    output_dir: Path,
    capabilities: tuple[str, ...],
    package: str | None,
    author: str | None,
    email: str | None,
    interactive: bool,
    overwrite: bool,
) -> None:
    """Create a plugin distribution for the messenger NAME ("Viber", "Web Chat") from amoconnect's template.

    \b
    Example:
      amoconnect new-plugin viber -c media -c delivery_receipts -o ~/src
    """
    context = {
        key: value
        for key, value in (("package_name", package), ("author_name", author), ("author_email", email))
        if value is not None
    }
    try:
        project = render_plugin(
            name,
            output_dir,
            capabilities=capabilities or None,
            context=context,
            interactive=interactive,
            overwrite=overwrite,
        )
    except AmoconnectError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"Created {project}")
    click.echo("Next:")
    click.echo(f"  cd {project}")
    click.echo('  python -m pip install -e ".[dev]"')
    click.echo("  python -m pytest        # its tests and amoconnect's conformance suite")
    click.echo("Then make fake.py and adapter.py speak the real API (README.md says how).")
