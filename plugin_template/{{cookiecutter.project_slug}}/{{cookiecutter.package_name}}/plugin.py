{% set P = cookiecutter.__class_prefix %}
"""The module the ``amoconnect`` entry point names: it registers the {{ cookiecutter.messenger_name }} adapter.

Keep it light: ``amoconnect plugins`` imports every installed plugin.
"""

from __future__ import annotations

from amoconnect import hookimpl
from amoconnect.hookspecs import RegisterMessenger

from .adapter import {{ P }}Adapter

__all__ = ["register_messengers"]


@hookimpl
def register_messengers(register: RegisterMessenger) -> None:
    """Register the {{ cookiecutter.messenger_name }} adapter."""
    register({{ P }}Adapter)
