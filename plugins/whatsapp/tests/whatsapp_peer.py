"""pywa as an independent peer, and a schema of Meta's request bodies.

- Every webhook the fake makes goes through pywa's own update routing and parsing
  (``WhatsApp._get_handler_type`` + ``Handler._update.from_update``, as pywa's tests load their
  fixtures); pywa requires the 2026 shape (``contacts[].user_id``), so webhooks of ``legacy``
  users are left out of this check.
- Every ``/messages`` body we send is validated against :data:`MESSAGE_SCHEMA`, written from
  Meta's OpenAPI description (facebook/openapi ``business-messaging-api_v23.0.yaml``: the
  ``Message`` schema's fields and maxLengths). The OpenAPI file itself is not available offline,
  and as published it rejects its own examples (``additionalProperties: false`` inside ``allOf``),
  so the schema here uses ``unevaluatedProperties: false`` at each object instead. Bodies pywa
  can build are also rebuilt through pywa's send methods and must come out equal.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import jsonschema
from pywa import WhatsApp
from pywa.types import Button, Section, SectionList, SectionRow
from pywa.types.base_update import RawUpdate

from amoconnect_whatsapp.fake import FakeWhatsApp

__all__ = ["MESSAGE_SCHEMA", "check_request", "check_webhook", "peer_check", "pywa_rebuild"]


def _str(limit: int, minimum: int = 1) -> dict[str, Any]:
    return {"type": "string", "minLength": minimum, "maxLength": limit}


def _obj(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(required), "additionalProperties": False}


_MEDIA = {
    kind: _obj(
        {
            "id": {"type": "string"},
            "link": {"type": "string", "pattern": "^https?://"},
            **({"caption": _str(1024, 0)} if kind in ("image", "video", "document") else {}),
            **({"filename": {"type": "string"}} if kind == "document" else {}),
        }
    )
    | {"oneOf": [{"required": ["id"]}, {"required": ["link"]}]}
    for kind in ("image", "video", "audio", "document", "sticker")
}
_ROW = _obj({"id": _str(200), "title": _str(24), "description": _str(72, 0)}, ("id", "title"))
_LIST = _obj(
    {
        "type": {"const": "list"},
        "header": _obj({"type": {"const": "text"}, "text": _str(60)}, ("type", "text")),
        "body": _obj({"text": _str(1024)}, ("text",)),
        "footer": _obj({"text": _str(60)}, ("text",)),
        "action": _obj(
            {
                "button": _str(20),
                "sections": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": 10,
                    "items": _obj(
                        {"title": _str(24), "rows": {"type": "array", "minItems": 1, "items": _ROW}}, ("rows",)
                    ),
                },
            },
            ("button", "sections"),
        ),
    },
    ("type", "body", "action"),
)
_BUTTONS = _obj(
    {
        "type": {"const": "button"},
        "body": _obj({"text": _str(1024)}, ("text",)),
        "action": _obj(
            {
                "buttons": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": 3,
                    "items": _obj(
                        {
                            "type": {"const": "reply"},
                            "reply": _obj({"id": _str(256), "title": _str(20)}, ("id", "title")),
                        },
                        ("type", "reply"),
                    ),
                }
            },
            ("buttons",),
        ),
    },
    ("type", "body", "action"),
)
# ``parameter_name``: a named template's parameter (Meta's "Send message templates" guide, named parameters).
_PARAMETER = _obj(
    {
        "type": {"const": "text"},
        "text": {"type": "string", "minLength": 1},
        "parameter_name": {"type": "string", "pattern": "^[a-z_][a-z0-9_]*$"},
    },
    ("type", "text"),
)
_TEMPLATE = _obj(
    {
        "name": {"type": "string", "pattern": "^[a-z0-9_]{1,512}$"},
        "language": _obj({"code": {"type": "string"}, "policy": {"const": "deterministic"}}, ("code",)),
        "components": {
            "type": "array",
            "items": _obj(
                {"type": {"enum": ["header", "body", "button"]}, "parameters": {"type": "array", "items": _PARAMETER}},
                ("type", "parameters"),
            ),
        },
    },
    ("name", "language"),
)
_CONTENT: dict[str, Any] = {
    "text": _obj({"body": _str(4096), "preview_url": {"type": "boolean"}}, ("body",)),
    "reaction": _obj(
        {"message_id": {"type": "string", "minLength": 1}, "emoji": {"type": "string"}}, ("message_id", "emoji")
    ),
    "interactive": {"oneOf": [_LIST, _BUTTONS]},
    "template": _TEMPLATE,
    **_MEDIA,
}
MESSAGE_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "oneOf": [
        {
            "type": "object",
            "properties": {
                "messaging_product": {"const": "whatsapp"},
                "recipient_type": {"const": "individual"},
                "to": {"type": "string", "pattern": "^[0-9]{5,20}$"},
                "recipient": {"type": "string", "minLength": 1},
                "type": {"const": kind},
                "context": _obj({"message_id": {"type": "string", "minLength": 1}}, ("message_id",)),
                "biz_opaque_callback_data": {"type": "string", "maxLength": 512},
                kind: schema,
            },
            "required": ["messaging_product", "type", kind],
            "oneOf": [{"required": ["to"]}, {"required": ["recipient"]}],
            "unevaluatedProperties": False,
        }
        for kind, schema in _CONTENT.items()
    ]
    + [
        _obj(
            {
                "messaging_product": {"const": "whatsapp"},
                "status": {"const": "read"},
                "message_id": {"type": "string", "minLength": 1},
                "typing_indicator": _obj({"type": {"const": "text"}}, ("type",)),
            },
            ("messaging_product", "status", "message_id"),
        )
    ],
}
_VALIDATOR = jsonschema.Draft202012Validator(MESSAGE_SCHEMA)

_captured: list[Any] = []


def _capture(request: httpx.Request) -> httpx.Response:
    _captured.append(json.loads(request.content) if request.content else None)
    answer = {
        "messaging_product": "whatsapp",
        "contacts": [{"input": "1", "wa_id": "1"}],
        "messages": [{"id": "wamid.x"}],
    }
    return httpx.Response(200, json={**answer, "success": True})


_WA = WhatsApp(
    phone_id="1000000001",
    token="peer-token",
    session=httpx.Client(transport=httpx.MockTransport(_capture)),
    server=None,
    verify_token=None,
    filter_updates=False,
)


def check_webhook(payload: dict[str, Any]) -> list[Any]:
    """Parse each change of a webhook the fake made through pywa; the pywa updates."""
    updates = []
    for entry in payload["entry"]:
        for change in entry["changes"]:
            value = change["value"]
            if change["field"] == "messages" and any("user_id" not in c for c in value.get("contacts", [])):
                continue  # the pre-2026 shape, which pywa 4.5 does not read
            single = {**payload, "entry": [{**entry, "changes": [change]}]}
            raw = RawUpdate(json.dumps(single).encode(), hmac_header=None, update_hash="peer")
            handler = _WA._get_handler_type(raw)
            assert handler is not None, f"pywa routes no handler for {single}"
            assert handler._update is not None
            updates.append(handler._update.from_update(_WA, raw))
    return updates


def pywa_rebuild(body: dict[str, Any]) -> dict[str, Any] | None:
    """The body pywa builds for the same message, or ``None`` when pywa has no plain builder for it."""
    to = body.get("to")
    kind = body.get("type")
    reply = (body.get("context") or {}).get("message_id")
    _captured.clear()
    if "status" in body:
        if "typing_indicator" not in body:
            _WA.mark_message_as_read(message_id=body["message_id"])
        else:
            _WA.indicate_typing(message_id=body["message_id"])
    elif to is None:
        return None
    elif kind == "text":
        text = body["text"]
        _WA.send_message(to=to, text=text["body"], preview_url=text.get("preview_url"), reply_to_message_id=reply)
    elif kind == "reaction":
        reaction = body["reaction"]
        if reaction["emoji"]:
            _WA.send_reaction(to=to, emoji=reaction["emoji"], message_id=reaction["message_id"])
        else:
            _WA.remove_reaction(to=to, message_id=reaction["message_id"])
    elif kind in ("image", "video", "document") and "link" in body[kind]:
        media = body[kind]
        send = getattr(_WA, f"send_{kind}")
        extra = {"filename": media["filename"]} if "filename" in media else {}
        send(to=to, **{kind: media["link"]}, caption=media.get("caption"), reply_to_message_id=reply, **extra)
    elif kind == "interactive":
        interactive = body["interactive"]
        action = interactive["action"]
        buttons: Any
        if interactive["type"] == "list":
            sections = [
                Section(
                    title=s.get("title"),
                    rows=[
                        SectionRow(title=r["title"], callback_data=r["id"], description=r.get("description"))
                        for r in s["rows"]
                    ],
                )
                for s in action["sections"]
            ]
            buttons = SectionList(button_title=action["button"], sections=sections)
        else:
            buttons = [Button(title=b["reply"]["title"], callback_data=b["reply"]["id"]) for b in action["buttons"]]
        _WA.send_message(
            to=to,
            text=interactive["body"]["text"],
            header=(interactive.get("header") or {}).get("text"),
            footer=(interactive.get("footer") or {}).get("text"),
            buttons=buttons,
            reply_to_message_id=reply,
        )
    else:
        return None
    return dict(_without_none(_captured[-1]))


def _without_none(value: Any) -> Any:
    """pywa writes ``"title": null`` for an untitled section; Meta's schema leaves the key out."""
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_none(v) for v in value]
    return value


def check_request(body: dict[str, Any]) -> None:
    """Validate one ``/messages`` body against the schema, and against pywa's builder where it has one."""
    errors = sorted(_VALIDATOR.iter_errors(body), key=lambda e: e.path)
    assert not errors, f"body does not fit Meta's message schema: {[e.message for e in errors][:3]}\n{body}"
    rebuilt = pywa_rebuild(body)
    if rebuilt is not None:
        assert rebuilt == body, f"pywa builds a different body:\n ours {body}\n pywa {rebuilt}"


def peer_check(fake: FakeWhatsApp) -> None:
    """Every webhook the fake made through pywa; every accepted /messages body through the schema and pywa."""
    for payload in fake.webhooks:
        check_webhook(payload)
    for call in fake.calls:
        if call.status == 200 and call.method == "POST" and call.path.endswith("/messages"):
            check_request(call.json)
