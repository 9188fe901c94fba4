"""Meta's record of a template: whether its parameters are positional (``{{1}}``) or named (``{{first_name}}``).

Meta's templates come in two parameter formats, fixed when the template is made
(``parameter_format``: ``POSITIONAL``, the default, or ``NAMED``). A named template's parameters
must each be sent with its ``parameter_name``; without it Meta refuses the message: HTTP 400,
``(#100) Invalid parameter``, details ``Parameter name is missing or empty``
(https://developers.facebook.com/docs/whatsapp/cloud-api/guides/send-message-templates#named-parameters;
the answer as seen in https://github.com/netflie/laravel-notification-whatsapp/issues/41).

:class:`Catalog` asks the WABA's template list (``GET /{waba-id}/message_templates``, filtered by
name) for a template's format and, for a named one, the names of its header and body parameters,
and keeps the answer for :attr:`Catalog.ttl` seconds (an approved template's text may be edited).
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from typing import Any, Final

from .cloudapi import GraphApi
from .compose import TemplateRef

__all__ = ["NAMED_MARKER", "Catalog", "named_ref"]

NAMED_MARKER: Final = re.compile(r"\{\{\s*([a-z_][a-z0-9_]*)\s*\}\}")
"""A named parameter in a template's text: lowercase letters, digits and ``_``, not starting with a digit."""


def _names(text: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(NAMED_MARKER.findall(text)))


def named_ref(ref: TemplateRef, record: Mapping[str, Any]) -> TemplateRef:
    """``ref`` as Meta's ``record`` of the template has it: for a named template, its parameter names."""
    if str(record.get("parameter_format") or "POSITIONAL").upper() != "NAMED":
        return ref
    texts = {
        str(c.get("type", "")).upper(): str(c.get("text") or "")
        for c in record.get("components") or []
        if isinstance(c, dict)
    }
    return TemplateRef(
        ref.name, ref.language, body=_names(texts.get("BODY", "")), header=_names(texts.get("HEADER", "")), named=True
    )


class Catalog:
    """The WABA's templates as Meta lists them, looked up by name and language and kept for a while."""

    ttl: float = 600.0
    """Seconds an answer is kept."""

    def __init__(self, api: GraphApi, waba_id: str) -> None:
        self.api = api
        self.waba_id = waba_id
        self._kept: dict[tuple[str, str], tuple[float, Mapping[str, Any] | None]] = {}

    async def record(self, name: str, language: str) -> Mapping[str, Any] | None:
        """Meta's record of template ``name`` in ``language``; ``None`` when the WABA has none.

        Raises :class:`~amoconnect.errors.MessengerError` when Meta does not answer (retryable) or refuses.
        """
        kept = self._kept.get((name, language))
        if kept is not None and kept[0] > time.monotonic():
            return kept[1]
        answer = await self.api.request(
            "GET",
            f"{self.waba_id}/message_templates",
            params={"name": name, "fields": "name,language,status,parameter_format,components", "limit": "100"},
        )
        data = answer.get("data") if isinstance(answer, dict) else None
        found = next(
            (t for t in data or [] if isinstance(t, dict) and t.get("name") == name and t.get("language") == language),
            None,
        )
        self._kept[(name, language)] = (time.monotonic() + self.ttl, found)
        return found
