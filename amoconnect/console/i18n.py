"""The console's two languages: one catalog per language in ``locales/{lang}.json`` (key → text,
``{name}`` placeholders), chosen by the switch, else the account's domain (``amocrm.ru`` reads
Russian; ``amocrm.com`` and ``kommo.com`` English), else the browser's ``Accept-Language``."""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from importlib import resources
from typing import Any

__all__ = ["DEFAULT", "LANGUAGES", "Translator", "catalog", "choose"]

LANGUAGES = ("en", "ru")
DEFAULT = "en"


@functools.cache
def catalog(lang: str) -> Mapping[str, str]:
    """The catalog of ``lang`` (one of :data:`LANGUAGES`)."""
    text = resources.files(__package__).joinpath("locales", f"{lang}.json").read_text("utf-8")
    found: dict[str, str] = json.loads(text)
    return found


def choose(chosen: str, domain: str, accept_language: str) -> str:
    """The language of a page: ``chosen`` by the switch, else by the account's ``domain``, else the
    first of ``accept_language`` the console speaks."""
    if chosen in LANGUAGES:
        return chosen
    if domain:
        return "ru" if domain == "amocrm.ru" else "en"
    for part in accept_language.split(","):
        tag = part.split(";")[0].strip().lower().split("-")[0]
        if tag in LANGUAGES:
            return tag
    return DEFAULT


class Translator:
    """``t("key", name=...)``: the text of ``key`` in one language (the key itself if a catalog lacks it)."""

    def __init__(self, lang: str) -> None:
        self.lang = lang
        self._texts = catalog(lang)

    def __call__(self, key: str, **values: Any) -> str:
        text = self._texts.get(key, key)
        return text.format(**values) if values else text
