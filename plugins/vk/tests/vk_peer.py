"""vkbottle-types as an independent peer: it checks the fake's events and answers, and the calls our adapter makes.

vkbottle's models ignore unknown keys and turn unknown enum values into ``NOT_SUPPORTED``, so
validating is not enough: every key of the raw JSON must be a field the model knows, at every
depth, and no enum may come out unsupported. Calls are checked against vkbottle's method
signatures (generated from VK's JSON schema): every parameter must exist, every required one
must be there.
"""

from __future__ import annotations

import enum
import importlib
import inspect
import re
from typing import Any

import pydantic
from vkbottle_types.events import bot_events

from amoconnect_vk.fake import FakeVK

__all__ = ["check_call", "check_event", "check_result", "peer_check", "unknown_keys"]

_GLOBAL = {"v", "access_token", "lang", "test_mode"}
_RESPONSES: dict[str, tuple[str, str]] = {
    "messages.send": ("messages", "MessagesSendPeerIdsResponse"),
    "wall.createComment": ("wall", "WallCreateCommentResponse"),
    "photos.saveMessagesPhoto": ("photos", "PhotosSaveMessagesPhotoResponse"),
    "photos.getMessagesUploadServer": ("photos", "PhotosGetMessagesUploadServerResponse"),
    "docs.save": ("docs", "DocsSaveResponse"),
    "users.get": ("users", "UsersGetResponse"),
    "groups.getLongPollServer": ("groups", "GroupsGetLongPollServerResponse"),
    "groups.getCallbackServers": ("groups", "GroupsGetCallbackServersResponse"),
    "groups.addCallbackServer": ("groups", "GroupsAddCallbackServerResponse"),
    "groups.getCallbackConfirmationCode": ("groups", "GroupsGetCallbackConfirmationCodeResponse"),
    "groups.getById": ("groups", "GroupsGetByIdObjectResponse"),
}


def _aliases(model: pydantic.BaseModel) -> dict[str, str]:
    return {(info.alias or name): name for name, info in type(model).model_fields.items()}


def unknown_keys(raw: Any, parsed: Any, where: str = "$") -> list[str]:
    """Paths of keys in ``raw`` the vkbottle object ``parsed`` does not know, and of enum values it does not."""
    found: list[str] = []
    if isinstance(parsed, enum.Enum) and parsed.value == "NOT_SUPPORTED":
        found.append(f"{where} = {raw!r} (not a value VK's schema knows)")
    elif isinstance(parsed, pydantic.BaseModel) and isinstance(raw, dict):
        aliases = _aliases(parsed)
        for key, value in raw.items():
            name = aliases.get(key)
            if name is None:
                found.append(f"{where}.{key}")
                continue
            found.extend(unknown_keys(value, getattr(parsed, name), f"{where}.{key}"))
    elif isinstance(parsed, list | tuple) and isinstance(raw, list):
        for index, (raw_item, item) in enumerate(zip(raw, parsed, strict=True)):
            found.extend(unknown_keys(raw_item, item, f"{where}[{index}]"))
    return found


def check_event(event: dict[str, Any]) -> pydantic.BaseModel:
    """Validate one event the fake emitted with vkbottle's model of its type; fail on anything it does not know."""
    name = "".join(part.title() for part in event["type"].split("_"))
    model: type[pydantic.BaseModel] = getattr(bot_events, name)
    parsed = model.model_validate(event)
    # VK's schema (callback_base) requires "v", the API version; vkbottle's envelope has no field for it
    unknown = [path for path in unknown_keys(event, parsed) if path != "$.v"]
    assert not unknown, f"{event['type']} event has keys or values vkbottle does not know: {unknown}"
    return parsed


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def check_call(method: str, params: dict[str, str]) -> None:
    """Every parameter of a call exists in VK's schema for ``method``, and every required one is there."""
    if method == "execute":
        return  # its calls are recorded and checked one by one
    category, _, name = method.partition(".")
    module = importlib.import_module(f"vkbottle_types.codegen.methods.{_snake(category)}")
    cls = getattr(module, f"{category[0].upper()}{category[1:]}Category")
    signature = inspect.signature(getattr(cls, _snake(name)))
    named = {n: p for n, p in signature.parameters.items() if n != "self" and p.kind is not p.VAR_KEYWORD}
    known = set(named)
    required = {n for n, p in named.items() if p.default is p.empty}
    given = set(params) - _GLOBAL
    assert given <= known, f"{method} has parameters VK's schema does not know: {sorted(given - known)}"
    assert required <= given, f"{method} lacks required parameters: {sorted(required - given)}"


def check_result(method: str, result: Any) -> None:
    """The fake's answer to ``method`` has the shape vkbottle's response model says."""
    found = _RESPONSES.get(method)
    if found is None or (method == "messages.send" and not isinstance(result, list)):
        return
    module, name = found
    model: type[pydantic.BaseModel] = getattr(importlib.import_module(f"vkbottle_types.responses.{module}"), name)
    parsed = model.model_validate({"response": result})
    unknown = unknown_keys({"response": result}, parsed)
    assert not unknown, f"the fake's answer to {method} has keys vkbottle does not know: {unknown}"


def peer_check(fake: FakeVK) -> None:
    """Check every event ``fake`` emitted and every successful call it answered."""
    for event in fake.events:
        check_event(event)
    for call in fake.calls:
        if call.error == 0:
            check_call(call.method, call.params)
            check_result(call.method, call.result)
