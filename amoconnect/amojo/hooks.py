"""amoCRM's webhooks beyond their shape: lenient repair of types, JSON or not, the account check.

amoCRM sends each webhook once and never again, so a signed webhook is never refused for a type
surprise. :func:`convert_leniently` decodes laxly (``"12"`` for an integer), then repairs what
still does not fit, one field at a time, as msgspec names it:

- a number where text is expected becomes that text (``42`` → ``"42"``);
- a fractional number where an integer is expected loses its fraction (``1639572260980.5``);
- an informational field (:data:`INFORMATIONAL`: sizes, durations, millisecond times, thumbnails,
  tags, avatars, a person's display name) that still does not fit is dropped, as if absent.

Anything else that does not fit (an id, the text, a button, a required field) raises, and the
webhook is kept as a dead letter with the reason instead (see ``server/app.py``). Pure functions.
"""

from __future__ import annotations

import math
import re
from typing import Any, TypeVar

import msgspec

from ..errors import NOT_JSON

__all__ = ["INFORMATIONAL", "MAX_REPAIRS", "convert_leniently", "foreign_account", "not_json"]

_T = TypeVar("_T")

INFORMATIONAL = frozenset({"msec_timestamp", "file_size", "media_duration", "thumbnail", "tag", "avatar"})
"""Fields whose value decides nothing (routing, ids, what the client gets): dropped when they do not fit.
A ``name`` is informational under ``sender`` and ``receiver``."""
_NAMED = frozenset({"sender", "receiver"})
MAX_REPAIRS = 64
"""A body needing more repairs than this is not understood."""

_ERROR = re.compile(r"^Expected `(?P<expected>[^`]*)`, got `(?P<got>\w+)` - at `\$(?P<path>[^`]*)`$")
_STEP = re.compile(r"\.(\w+)|\[(\d+)\]")


def not_json(body: bytes) -> str | None:
    """Why ``body`` is not JSON at all (not UTF-8, broken, nested past the decoder's depth); None when it is."""
    try:
        msgspec.json.decode(body)
    except (msgspec.DecodeError, *NOT_JSON) as exc:
        return f"webhook body is not valid JSON: {exc}"
    return None


def foreign_account(hook_account_id: str, scope_id: str, amojo_id: str) -> str | None:
    """Why a hook for ``hook_account_id`` is not for ``scope_id`` (whose account is ``amojo_id``); None if it is."""
    if hook_account_id == amojo_id:
        return None
    return f"hook for account {hook_account_id!r} sent to scope {scope_id!r} (its account is {amojo_id!r})"


def convert_leniently(obj: Any, type_: type[_T]) -> _T:
    """Decoded JSON ``obj`` as ``type_``, laxly and with the repairs the module docstring lists.

    ``obj`` is repaired in place. Raises :class:`msgspec.ValidationError` (naming the path) for
    what cannot be repaired.
    """
    for _ in range(MAX_REPAIRS + 1):
        try:
            return msgspec.convert(obj, type_, strict=False)
        except msgspec.ValidationError as exc:
            if not _repair(obj, str(exc)):
                raise
    raise msgspec.ValidationError(f"more than {MAX_REPAIRS} fields of the wrong type")


def _repair(obj: Any, error: str) -> bool:
    """Repair the one field ``error`` names; False when it cannot be."""
    found = _ERROR.match(error)
    if found is None:
        return False
    steps = [name if name else int(index) for name, index in _STEP.findall(found["path"])]
    if not steps or not isinstance(steps[-1], str):
        return False
    parent = obj
    for step in steps[:-1]:
        try:
            parent = parent[step]
        except (KeyError, IndexError, TypeError):
            return False
    leaf = steps[-1]
    if not isinstance(parent, dict) or leaf not in parent:
        return False
    value, expected = parent[leaf], set(found["expected"].split(" | "))
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if "str" in expected and number:
        parent[leaf] = msgspec.json.encode(value).decode()
    elif "int" in expected and isinstance(value, float) and math.isfinite(value):
        parent[leaf] = int(value)
    elif leaf in INFORMATIONAL or (leaf == "name" and len(steps) > 1 and steps[-2] in _NAMED):
        del parent[leaf]
    else:
        return False
    return True
