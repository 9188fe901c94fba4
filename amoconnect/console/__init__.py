"""The console: web pages under ``/console/`` for an account's admin and for the operator.

A face on :mod:`amoconnect.tenants` (the same operations as the admin API) and the store; it is
handed what it needs (:class:`ConsoleParts`) and imports no runtime.
"""

from __future__ import annotations

from .parts import ConsoleParts
from .routes import console_routes
from .samples import Samples
from .session import SessionCodec

__all__ = ["ConsoleParts", "Samples", "SessionCodec", "console_routes"]
