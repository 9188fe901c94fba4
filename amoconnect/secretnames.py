"""Which settings are secrets: one whose name holds a secret word (token, secret, password, key,
confirmation). Secrets are redacted in logs and answers, never shown in errors, and sealed at rest."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["SECRET_WORDS", "is_secret", "replace_secrets", "secret_values"]

SECRET_WORDS = ("token", "secret", "password", "key", "confirmation")


def is_secret(name: str) -> bool:
    """Whether a setting called ``name`` holds a secret."""
    lowered = name.lower()
    return any(word in lowered for word in SECRET_WORDS)


def secret_values(settings: dict[str, Any]) -> list[str]:
    """The non-empty secret strings in ``settings``, nested tables included."""
    found: list[str] = []
    for key, value in settings.items():
        if isinstance(value, dict):
            found.extend(secret_values(value))
        elif isinstance(value, str) and value and is_secret(key):
            found.append(value)
    return found


def replace_secrets(settings: dict[str, Any], change: Callable[[str], str]) -> dict[str, Any]:
    """``settings`` with ``change`` applied to every secret string, nested tables included."""
    return {
        key: replace_secrets(value, change)
        if isinstance(value, dict)
        else change(value)
        if isinstance(value, str) and is_secret(key)
        else value
        for key, value in settings.items()
    }
