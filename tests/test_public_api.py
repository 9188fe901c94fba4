"""Meta-tests of the public surface: ``__all__`` lists what each module defines, and the contract is exported."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from types import ModuleType

import pytest

import amoconnect

MODULES = sorted(
    name
    for info in pkgutil.walk_packages(amoconnect.__path__, "amoconnect.")
    if not (name := info.name).rsplit(".", 1)[-1].startswith("_") and name != "amoconnect.__main__"
)


@pytest.mark.parametrize("name", MODULES)
def test_all_lists_every_public_class_and_function(name: str) -> None:
    module: ModuleType = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    if exported is None:
        assert not [
            n
            for n, v in vars(module).items()
            if not n.startswith("_") and inspect.isfunction(v) and v.__module__ == name and n != "main"
        ], f"{name} defines public functions but has no __all__"
        return
    defined = {
        n
        for n, value in vars(module).items()
        if not n.startswith("_") and (inspect.isclass(value) or inspect.isfunction(value)) and value.__module__ == name
    }
    assert defined <= set(exported), f"{name}: not in __all__: {sorted(defined - set(exported))}"
    assert all(hasattr(module, n) for n in exported), f"{name}: __all__ names what it does not define"


def test_the_plugin_contract_is_exported_from_the_package() -> None:
    for name in (
        "hookimpl",
        "MessengerAdapter",
        "Capability",
        "ReactionSet",
        "InboundMessage",
        "OutgoingMessage",
        "SendResult",
        "MessengerError",
        "RateLimited",
    ):
        assert name in amoconnect.__all__


def test_typed_marker_ships() -> None:
    from importlib.resources import files

    assert files("amoconnect").joinpath("py.typed").is_file()
