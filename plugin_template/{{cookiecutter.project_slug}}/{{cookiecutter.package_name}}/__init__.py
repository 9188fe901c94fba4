"""{{ cookiecutter.messenger_name }} for amoconnect.

The ``amoconnect`` entry point names :mod:`{{ cookiecutter.package_name }}.plugin`.
"""

from __future__ import annotations

__version__ = "0.1.0"
