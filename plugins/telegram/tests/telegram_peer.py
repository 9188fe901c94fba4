"""aiogram as an independent peer: it checks the fake's updates and the requests our adapter sends.

aiogram's models accept unknown keys (``extra="allow"``), so validating is not enough: every key
of the raw JSON must also be a field the model knows, at every depth.
"""

from __future__ import annotations

from typing import Any

import aiogram.methods
import pydantic
from aiogram.types import BufferedInputFile, Update

__all__ = ["check_call", "check_update", "unknown_keys"]

_METHODS = {
    name.lower(): model
    for name, model in vars(aiogram.methods).items()
    if isinstance(model, type) and issubclass(model, aiogram.methods.TelegramMethod)
}


def _aliases(model: pydantic.BaseModel) -> dict[str, str]:
    fields = type(model).model_fields
    return {(info.alias or name): name for name, info in fields.items()}


def unknown_keys(raw: Any, parsed: Any, where: str = "$") -> list[str]:
    """Paths of keys in ``raw`` that the aiogram object ``parsed`` left unparsed."""
    found: list[str] = []
    if isinstance(parsed, pydantic.BaseModel) and isinstance(raw, dict):
        aliases = _aliases(parsed)
        for key, value in raw.items():
            name = aliases.get(key)
            if name is None:
                found.append(f"{where}.{key}")
                continue
            found.extend(unknown_keys(value, getattr(parsed, name), f"{where}.{key}"))
        found.extend(f"{where}.{key} (extra)" for key in (parsed.model_extra or {}) if key not in raw)
    elif isinstance(parsed, list | tuple) and isinstance(raw, list):
        for index, (raw_item, item) in enumerate(zip(raw, parsed, strict=True)):
            found.extend(unknown_keys(raw_item, item, f"{where}[{index}]"))
    return found


def check_update(raw: dict[str, Any]) -> Update:
    """Validate one update the fake emitted; fail on any key aiogram does not know."""
    update = Update.model_validate(raw)
    unknown = unknown_keys(raw, update)
    assert not unknown, f"update {raw.get('update_id')} has keys aiogram does not know: {unknown}"
    return update


def check_call(method: str, params: dict[str, Any], files: dict[str, tuple[str, bytes]]) -> pydantic.BaseModel:
    """Validate one Bot API request against aiogram's model of the method (uploads as input files)."""
    model = _METHODS[method.lower()]
    uploads = {name: BufferedInputFile(content, filename=file_name) for name, (file_name, content) in files.items()}
    merged: dict[str, Any] = {}
    for key, value in params.items():
        attached = value.removeprefix("attach://") if isinstance(value, str) else None
        merged[key] = uploads.pop(attached) if attached in uploads else value
    merged.update(uploads)  # an upload in the parameter's own name
    parsed: pydantic.BaseModel = model.model_validate(merged)
    unknown = unknown_keys(merged, parsed)
    assert not unknown, f"{method} has parameters aiogram does not know: {unknown}"
    return parsed
