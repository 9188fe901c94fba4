"""Building the plugin manager and reading what the plugins provide.

Plugins are found through the ``amoconnect`` entry point group (the entry point's name is the
plugin's name), and also, for development, as modules named on the command line or as every
``*.py`` file of a ``--plugin-dir``. Those local plugins register first, so one named like an
installed plugin replaces it. Nothing loads at import time and there is no global manager: the
runtime builds one with :func:`get_plugin_manager` and owns it.

``AMOCONNECT_TRACE_HOOKS=1`` in the environment logs every hook call (arguments, the plugins
called, the result) through structlog.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, Final, TypeVar

import pluggy
import structlog

from . import hookspecs
from .adapter import MessengerAdapter, validate_adapter
from .errors import PluginError
from .model import Conversation, InboundMessage, OutgoingMessage

__all__ = [
    "BLOCK_ENV",
    "ENTRY_POINT_GROUP",
    "TRACE_ENV",
    "alter_inbound_message",
    "alter_outgoing_message",
    "collect_messengers",
    "describe_plugins",
    "get_plugin_manager",
]

ENTRY_POINT_GROUP: Final = "amoconnect"
"""The entry point group plugins declare themselves in (the project's name)."""
BLOCK_ENV: Final = "AMOCONNECT_BLOCK"
"""Environment variable the command line reads plugins to block from (names separated by spaces),
as it does ``--block NAME``."""
TRACE_ENV: Final = "AMOCONNECT_TRACE_HOOKS"
"""Environment variable that turns hook-call tracing on (``1``, ``true``, ``yes`` or ``on``)."""

_PLUGIN_DIR_PACKAGE = "_amoconnect_plugin_dir"
_T = TypeVar("_T")


def get_plugin_manager(
    *,
    load_entrypoints: bool = True,
    only: str | None = None,
    blocked: Iterable[str] = (),
    extra_modules: Iterable[str | ModuleType] = (),
    plugin_dirs: Iterable[Path | str] = (),
) -> pluggy.PluginManager:
    """A fresh plugin manager with amoconnect's hooks and the chosen plugins, checked.

    ``extra_modules`` are registered under their module names (a string is imported first),
    each ``*.py`` of ``plugin_dirs`` under its file name without ``.py``; then, when
    ``load_entrypoints``, the installed plugins (only the one named ``only``, if given). A name
    in ``blocked`` never loads. Raises :class:`PluginError` when a plugin cannot be imported,
    implements a hook that does not exist or takes arguments its hook does not give, or when
    ``only`` names no plugin.
    """
    pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
    pm.add_hookspecs(hookspecs)
    for name in blocked:
        pm.set_blocked(name)

    installed = {
        ep.value: ep.name
        for dist in importlib.metadata.distributions()
        for ep in dist.entry_points
        if ep.group == ENTRY_POINT_GROUP
    }
    for module in extra_modules:
        if isinstance(module, str):
            if pm.is_blocked(module):
                continue
            module = _import_module(module)
        # A module that is also an installed plugin keeps the plugin's name, so it is not loaded twice.
        _register(pm, module, installed.get(module.__name__, module.__name__))
    for directory in plugin_dirs:
        for path in _plugin_files(Path(directory)):
            if not pm.is_blocked(path.stem):
                _register(pm, _import_file(path), path.stem)

    if load_entrypoints:
        try:
            pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP, name=only)
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"plugin {_plugin_label(pm, exc.plugin)} is invalid: {exc}") from exc
        except Exception as exc:
            name, where = _failed_entry_point(pm, only)
            raise PluginError(
                f"installed plugin {name!r} failed to load: {type(exc).__name__}: {exc} ({where}); "
                f"{_block_advice(name)}, or fix or uninstall it"
            ) from exc
    if only is not None and pm.get_plugin(only) is None:
        state = "is blocked" if pm.is_blocked(only) else "is not installed"
        raise PluginError(f"plugin {only!r} {state}; `amoconnect plugins` lists the installed plugins")

    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"plugin {_plugin_label(pm, exc.plugin)}: {exc}; see docs/hooks.md for the hooks") from exc
    if os.environ.get(TRACE_ENV, "").strip().lower() in {"1", "true", "yes", "on"}:
        _trace(pm)
    return pm


def collect_messengers(pm: pluggy.PluginManager) -> dict[str, type[MessengerAdapter]]:
    """Every messenger adapter the plugins register, by messenger name, each validated.

    Raises :class:`PluginError` for an invalid adapter class or a messenger name registered twice.
    """
    return {adapter.name: adapter for _, adapter in _registered_messengers(pm)}


def describe_plugins(pm: pluggy.PluginManager) -> list[dict[str, Any]]:
    """What ``amoconnect plugins --json`` shows: each plugin with its distribution, hooks and messengers."""
    distributions = dict(pm.list_plugin_distinfo())
    messengers = _registered_messengers(pm)
    described = []
    for name, plugin in sorted(pm.list_name_plugin(), key=lambda item: item[0]):
        if plugin is None:  # blocked
            continue
        dist = distributions.get(plugin)
        described.append(
            {
                "name": name,
                "distribution": dist.project_name if dist is not None else None,
                "version": dist.version if dist is not None else None,
                "hooks": sorted(caller.name for caller in pm.get_hookcallers(plugin) or ()),
                "messengers": [_describe_adapter(adapter) for owner, adapter in messengers if owner == name],
            }
        )
    return described


def alter_inbound_message(
    pm: pluggy.PluginManager, event: InboundMessage, conversation: Conversation
) -> InboundMessage:
    """Run the ``inbound_message`` hook: each implementation gets the message the previous one left."""
    return _pipe(pm, "inbound_message", "event", event, InboundMessage, conversation=conversation)


def alter_outgoing_message(
    pm: pluggy.PluginManager, message: OutgoingMessage, conversation: Conversation
) -> OutgoingMessage:
    """Run the ``outgoing_message`` hook: each implementation gets the message the previous one left."""
    return _pipe(pm, "outgoing_message", "message", message, OutgoingMessage, conversation=conversation)


# -- loading -------------------------------------------------------------------------------------


def _failed_entry_point(pm: pluggy.PluginManager, only: str | None) -> tuple[str, str]:
    """The entry point pluggy's loader stopped at: its name, and where it comes from.

    The loader goes through the distributions in order and skips what is registered or
    blocked, so the one that failed is the first it would not skip (as it now stands).
    """
    for dist in importlib.metadata.distributions():
        for ep in dist.entry_points:
            if ep.group != ENTRY_POINT_GROUP or (only is not None and ep.name != only):
                continue
            if pm.get_plugin(ep.name) is None and not pm.is_blocked(ep.name):
                return ep.name, (
                    f"entry point {ep.name} = {ep.value!r} of distribution {dist.metadata['name']} {dist.version}"
                )
    return "?", "its entry point was not found again"


def _block_advice(name: str) -> str:
    return (
        f"to run without it, block it: `amoconnect --block {name} COMMAND ...`, "
        f'{BLOCK_ENV}={name} or `[plugins] blocked = ["{name}"]` in the configuration'
    )


def _plugin_label(pm: pluggy.PluginManager, plugin: object) -> str:
    name = pm.get_name(plugin)
    return repr(name) if name is not None else repr(getattr(plugin, "__name__", plugin))


def _register(pm: pluggy.PluginManager, module: ModuleType, name: str) -> None:
    taken = pm.get_plugin(name)
    if taken is not None:
        where = getattr(taken, "__file__", None) or repr(taken)
        raise PluginError(f"plugin name {name!r} is taken twice: by {where} and by {module.__file__ or module!r}")
    try:
        pm.register(module, name=name)
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"plugin {name!r} is invalid: {exc}; see docs/hooks.md for the hooks") from exc
    except ValueError as exc:
        raise PluginError(f"plugin {name!r} cannot be registered: {exc}") from exc


def _import_module(path: str) -> ModuleType:
    try:
        return importlib.import_module(path)
    except Exception as exc:
        raise PluginError(f"plugin module {path!r} failed to import: {type(exc).__name__}: {exc}") from exc


def _plugin_files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        raise PluginError(f"plugin directory {str(directory)!r} does not exist or is not a directory")
    return sorted(path for path in directory.glob("*.py") if path.is_file())


def _import_file(path: Path) -> ModuleType:
    # Registered in sys.modules (under a private package name, so that a file named like an
    # installed package shadows nothing) because msgspec and dataclasses resolve a module's
    # annotations through it.
    module_name = f"{_PLUGIN_DIR_PACKAGE}.{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise PluginError(f"plugin file {str(path)!r} cannot be imported")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[module_name]
        raise PluginError(f"plugin file {str(path)!r} failed to import: {type(exc).__name__}: {exc}") from exc
    return module


# -- calling -------------------------------------------------------------------------------------


def _each_plugin(pm: pluggy.PluginManager, hook_name: str) -> Iterator[tuple[str, pluggy.HookCaller]]:
    """Per implementing plugin, in pluggy's call order: its name and a caller of its implementation alone.

    Calling through pluggy keeps tracing and argument checks; it lets the caller tell which
    plugin did what and chain one plugin's result into the next.
    """
    impls = getattr(pm.hook, hook_name).get_hookimpls()
    for impl in impls:
        # subset_hook_caller finds a plugin's implementation by the hook's name
        if not hasattr(impl.plugin, hook_name):
            raise PluginError(
                f"plugin {impl.plugin_name!r} implements {hook_name} under another function name; "
                f"name the function {hook_name}"
            )
    for impl in reversed(impls):
        others = [other.plugin for other in impls if other.plugin is not impl.plugin]
        caller = pm.subset_hook_caller(hook_name, others)
        yield impl.plugin_name, caller


def _pipe(pm: pluggy.PluginManager, hook_name: str, arg: str, value: _T, kind: type[_T], **context: object) -> _T:
    for plugin_name, call in _each_plugin(pm, hook_name):
        for result in call(**{arg: value}, **context):
            if not isinstance(result, kind):
                raise PluginError(
                    f"plugin {plugin_name!r}: {hook_name} returned a {type(result).__name__}; "
                    f"return None or a {kind.__name__}"
                )
            value = result
    return value


class _Registrar:
    """The ``register`` callable one plugin's ``register_messengers`` gets."""

    def __init__(self, plugin: str, found: list[tuple[str, type[MessengerAdapter]]]) -> None:
        self.plugin = plugin
        self.found = found

    def __call__(self, adapter: type[MessengerAdapter], /) -> None:
        validate_adapter(adapter, plugin=self.plugin)
        for owner, known in self.found:
            if known.name == adapter.name:
                raise PluginError(
                    f"messenger {adapter.name!r} is registered twice: by plugin {owner!r} "
                    f"({known.__module__}.{known.__qualname__}) and by plugin {self.plugin!r} "
                    f"({adapter.__module__}.{adapter.__qualname__}); uninstall or block one of them"
                )
        self.found.append((self.plugin, adapter))


def _registered_messengers(pm: pluggy.PluginManager) -> list[tuple[str, type[MessengerAdapter]]]:
    found: list[tuple[str, type[MessengerAdapter]]] = []
    for plugin_name, call in _each_plugin(pm, "register_messengers"):
        try:
            call(register=_Registrar(plugin_name, found))
        except PluginError:
            raise
        except Exception as exc:
            raise PluginError(
                f"plugin {plugin_name!r} failed in register_messengers: {type(exc).__name__}: {exc}; "
                f"{_block_advice(plugin_name)}"
            ) from exc
    return found


def _describe_adapter(adapter: type[MessengerAdapter]) -> dict[str, Any]:
    only = adapter.reactions.only
    return {
        "name": adapter.name,
        "adapter": f"{adapter.__module__}.{adapter.__qualname__}",
        "capabilities": sorted(str(capability) for capability in adapter.capabilities),
        "reactions": "any" if only is None else sorted(only),
        "reply_window": adapter.reply_window,
    }


# -- tracing -------------------------------------------------------------------------------------


def _short(value: object, limit: int = 300) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _trace(pm: pluggy.PluginManager) -> None:
    log = structlog.get_logger("amoconnect.plugins")

    def before(hook_name: str, hook_impls: Sequence[pluggy.HookImpl], kwargs: Mapping[str, object]) -> None:
        log.info(
            "hook call",
            hook=hook_name,
            plugins=[impl.plugin_name for impl in hook_impls],
            arguments={key: _short(value) for key, value in kwargs.items()},
        )

    def after(
        outcome: pluggy.Result[object],
        hook_name: str,
        hook_impls: Sequence[pluggy.HookImpl],
        kwargs: Mapping[str, object],
    ) -> None:
        if outcome.exception is not None:
            log.info("hook failed", hook=hook_name, error=_short(outcome.exception))
        else:
            log.info("hook done", hook=hook_name, result=_short(outcome.get_result()))

    pm.add_hookcall_monitoring(before, after)
