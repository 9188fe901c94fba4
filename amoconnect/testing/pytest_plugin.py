"""pytest plugin of amoconnect's test kit (registered through the ``pytest11`` entry point)."""

from __future__ import annotations
