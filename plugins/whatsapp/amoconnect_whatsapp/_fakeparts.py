"""Pieces of the fake Graph API: its records, its error envelope and the checks of what we send.

The checks follow Meta's published limits (OpenAPI ``Message`` schema and its examples, and the
rules the schema cannot say, such as "at most 10 rows in all sections"); they are stricter than
Meta where a stray key would only be ignored, so that our own typos fail loudly.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any, Final, NoReturn

from starlette.responses import JSONResponse

from .cloudapi import (
    BODY_LIMIT,
    BUTTON_ID_LIMIT,
    BUTTON_TITLE_LIMIT,
    CAPTION_LIMIT,
    HEADER_LIMIT,
    LIST_BUTTON_LIMIT,
    LIST_ROWS_LIMIT,
    LIST_SECTIONS_LIMIT,
    REPLY_BUTTONS_LIMIT,
    ROW_DESCRIPTION_LIMIT,
    ROW_ID_LIMIT,
    ROW_TITLE_LIMIT,
    TEXT_LIMIT,
)

__all__ = [
    "ERRORS",
    "MEDIA_KINDS",
    "ApiCall",
    "Delivery",
    "GraphFail",
    "MediaFile",
    "Number",
    "Sent",
    "StoredTemplate",
    "User",
    "check_message",
    "check_template_request",
    "error_response",
    "fail",
    "multipart",
]

MEDIA_KINDS: Final = ("image", "video", "audio", "document", "sticker")
_TYPES: Final = frozenset({*MEDIA_KINDS, "text", "reaction", "interactive", "template", "location", "contacts"})
_BASE_KEYS: Final = frozenset(
    {"messaging_product", "recipient_type", "to", "recipient", "type", "context", "biz_opaque_callback_data"}
)
_TEMPLATE_NAME: Final = re.compile(r"[a-z0-9_]{1,512}\Z")
_CATEGORIES: Final = frozenset({"MARKETING", "UTILITY", "AUTHENTICATION"})
ERRORS: Final[dict[int, tuple[str, str]]] = {
    131026: (
        "Message undeliverable",
        "Unable to deliver message. Reasons can include: the recipient is not on WhatsApp",
    ),
    131047: (
        "Re-engagement message",
        "Message failed to send because more than 24 hours have passed since the customer last replied to this number.",
    ),
    470: (
        "Message failed to send because more than 24 hours have passed since the customer last replied to this number",
        "Message failed to send because more than 24 hours have passed since the customer last replied to this number.",
    ),
    131053: ("Media upload error", "Unable to download the media from the link."),
    131056: ("(Business Account, Consumer Account) pair rate limit hit", "Too many messages sent to this user."),
    130429: ("Rate limit hit", "Cloud API message throughput has been reached."),
}
"""Meta's title and details of the errors the fake reports late."""


# -- errors ---------------------------------------------------------------------------------------


class GraphFail(Exception):
    """A refusal in Graph's envelope."""

    def __init__(
        self,
        code: int,
        message: str,
        *,
        details: str = "",
        status: int = 400,
        subcode: int | None = None,
        kind: str = "OAuthException",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details
        self.status = status
        self.subcode = subcode
        self.kind = kind
        self.headers = headers or {}

    def envelope(self) -> dict[str, Any]:
        """The error as Graph answers it."""
        error: dict[str, Any] = {
            "message": self.message,
            "type": self.kind,
            "code": self.code,
            "fbtrace_id": "A" + secrets.token_hex(10),
        }
        if self.subcode is not None:
            error["error_subcode"] = self.subcode
        if self.details:
            error["error_data"] = {"messaging_product": "whatsapp", "details": self.details}
        return {"error": error}


def fail(code: int, message: str, details: str = "", **options: Any) -> NoReturn:
    """Refuse the request."""
    raise GraphFail(code, message, details=details, **options)


def error_response(error: GraphFail) -> JSONResponse:
    """The HTTP answer of a refusal."""
    return JSONResponse(error.envelope(), status_code=error.status, headers=error.headers)


def _invalid(details: str) -> NoReturn:
    """131009: a parameter value is not valid."""
    fail(131009, "(#131009) Parameter value is not valid", details)


def _missing(details: str) -> NoReturn:
    """131008: a required parameter is missing."""
    fail(131008, "(#131008) Required parameter is missing", details)


def _unknown(key: str) -> NoReturn:
    """100: a parameter the API does not know (Meta ignores some; the fake refuses them all)."""
    fail(100, f"(#100) Param {key} is not a valid parameter", f"unexpected key {key!r}")


def multipart(body: bytes, content_type: str) -> tuple[dict[str, str], tuple[bytes, str] | None]:
    """The fields of a ``multipart/form-data`` body, and its ``file`` part (bytes, content type)."""
    if not content_type.startswith("multipart/form-data"):
        fail(100, "(#100) The upload must be multipart/form-data")
    message = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    fields: dict[str, str] = {}
    upload: tuple[bytes, str] | None = None
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if not isinstance(name, str) or not isinstance(payload, bytes):
            continue
        if part.get_filename() is not None:
            upload = (payload, part.get_content_type())
        else:
            fields[name] = payload.decode()
    return fields, upload


# -- records --------------------------------------------------------------------------------------


@dataclass
class Number:
    """A business phone number of the fake."""

    phone_number_id: str
    waba_id: str
    token: str
    display_phone_number: str
    webhook_url: str | None = None
    """Where this number's webhooks go (its override, else its WABA's URL)."""
    registered: bool = True
    """False: the number is not registered with the Cloud API, and sends fail with 133010."""
    business_app: bool = False
    """True: the number is on the WhatsApp Business app too (coexistence), whose sends make ``smb_message_echoes``."""


@dataclass
class User:
    """A WhatsApp user; ``key`` is how tests name them."""

    key: str
    wa_id: str | None
    user_id: str
    name: str = ""
    username: str | None = None
    legacy: bool = False
    """True: webhooks carry only ``wa_id`` (the shape before business-scoped user ids)."""
    last_message_at: dict[str, float] = field(default_factory=dict)
    """phone_number_id → when the user last wrote to that number (the 24-hour window)."""

    @property
    def chat(self) -> str:
        """The chat id an adapter sees: the phone number, else the user id."""
        return self.wa_id or self.user_id


@dataclass
class Sent:
    """A message the business sent (or tried to): the request's body and what became of it."""

    wamid: str
    phone_number_id: str
    user: User | None
    to: str
    body: dict[str, Any]
    statuses: list[str] = field(default_factory=list)
    reactions: list[str] = field(default_factory=list)
    """The user's reactions to it."""

    @property
    def type(self) -> str:
        """The message type (``text``, ``image``, ``interactive``...)."""
        return str(self.body.get("type"))

    @property
    def text(self) -> str:
        """The text, caption, interactive body or template name."""
        content = self.body.get(self.type)
        if not isinstance(content, dict):
            return ""
        if self.type == "text":
            return str(content.get("body", ""))
        if self.type == "interactive":
            return str(content.get("body", {}).get("text", ""))
        if self.type == "template":
            return str(content.get("name", ""))
        return str(content.get("caption", ""))


@dataclass
class MediaFile:
    """A file of the fake: uploaded by the business, or sent by a user."""

    id: str
    phone_number_id: str
    content: bytes
    mime_type: str
    sha256: str


@dataclass
class StoredTemplate:
    """A message template of a WABA."""

    id: str
    waba_id: str
    name: str
    language: str
    category: str
    components: list[dict[str, Any]]
    status: str = "PENDING"
    reason: str = ""
    parameter_format: str = "POSITIONAL"
    """``NAMED`` (``{{first_name}}``, each sent with its ``parameter_name``) or ``POSITIONAL`` (``{{1}}``)."""

    def variables(self, kind: str) -> list[str]:
        """The parameters of the template's ``kind`` (``BODY``, ``HEADER``) component, each once, in order."""
        for component in self.components:
            if str(component.get("type", "")).upper() == kind:
                return list(dict.fromkeys(re.findall(r"\{\{\s*(\w+)\s*\}\}", str(component.get("text", "")))))
        return []


@dataclass
class ApiCall:
    """A request the fake got and its HTTP status."""

    method: str
    path: str
    json: Any
    status: int = 200


@dataclass
class Delivery:
    """A webhook POST the fake made."""

    url: str
    body: bytes
    status: int | None
    attempt: int


# -- checks of what we send ----------------------------------------------------------------------


def _keys(obj: Any, where: str, allowed: set[str] | frozenset[str], required: tuple[str, ...] = ()) -> dict[str, Any]:
    if not isinstance(obj, dict):
        fail(100, f"(#100) Param {where} must be an object", f"{where} is {type(obj).__name__}")
    for key in obj:
        if key not in allowed:
            _unknown(f"{where}['{key}']" if where else key)
    for key in required:
        if obj.get(key) in (None, ""):
            _missing(f"{where}['{key}'] is required" if where else f"{key} is required")
    return obj


def _text(value: Any, where: str, limit: int, *, required: bool = True) -> str:
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value.strip()):
        _missing(f"{where} is required and must be non-empty text")
    if len(value) > limit:
        _invalid(f"{where} must be at most {limit} characters, got {len(value)}")
    return value


def check_message(body: dict[str, Any]) -> str:
    """Check a send's body as the messages endpoint does; its ``type``, or a :class:`GraphFail`."""
    kind = body.get("type", "text")
    if kind not in _TYPES:
        _invalid(f"type {kind!r} is not a message type")
    _keys(body, "", _BASE_KEYS | {kind})
    if body.get("recipient_type", "individual") != "individual":
        _invalid("recipient_type must be individual")
    if ("to" in body) == ("recipient" in body):
        _missing("exactly one of 'to' and 'recipient' is required")
    if "context" in body:
        _keys(body["context"], "context", {"message_id"}, ("message_id",))
    content = body.get(kind)
    if kind == "text":
        text = _keys(content, "text", {"body", "preview_url"}, ("body",))
        _text(text["body"], "text['body']", TEXT_LIMIT)
        if not isinstance(text.get("preview_url", False), bool):
            _invalid("text['preview_url'] must be a boolean")
    elif kind in MEDIA_KINDS:
        allowed = {"id", "link"}
        if kind in ("image", "video", "document"):
            allowed.add("caption")
        if kind == "document":
            allowed.add("filename")
        media = _keys(content, kind, allowed)
        if ("id" in media) == ("link" in media):
            _missing(f"{kind} needs exactly one of 'id' and 'link'")
        if "link" in media and not str(media["link"]).startswith(("http://", "https://")):
            _invalid(f"{kind}['link'] must be an http(s) URL")
        _text(media.get("caption"), f"{kind}['caption']", CAPTION_LIMIT, required=False)
    elif kind == "reaction":
        reaction = _keys(content, "reaction", {"message_id", "emoji"}, ("message_id",))
        emoji = reaction.get("emoji")
        if not isinstance(emoji, str) or len(emoji) > 10 or any(c.isalnum() for c in emoji):
            _invalid("reaction['emoji'] must be one emoji, or empty to remove the reaction")
    elif kind == "interactive":
        _interactive(content)
    elif kind == "template":
        template = _keys(content, "template", {"name", "language", "components"}, ("name", "language"))
        _keys(template["language"], "template['language']", {"code", "policy"}, ("code",))
        for index, component in enumerate(template.get("components") or []):
            where = f"template['components'][{index}]"
            _keys(component, where, {"type", "sub_type", "index", "parameters"}, ("type",))
    return str(kind)


def _interactive(content: Any) -> None:
    interactive = _keys(content, "interactive", {"type", "header", "body", "footer", "action"}, ("type", "action"))
    kind = interactive["type"]
    if kind not in ("list", "button"):
        _invalid(f"interactive['type'] {kind!r}: the fake knows list and button")
    body = _keys(interactive.get("body"), "interactive['body']", {"text"}, ("text",))
    _text(body["text"], "interactive['body']['text']", BODY_LIMIT)
    if "footer" in interactive:
        footer = _keys(interactive["footer"], "interactive['footer']", {"text"}, ("text",))
        _text(footer["text"], "interactive['footer']['text']", HEADER_LIMIT)
    if "header" in interactive:
        header = _keys(interactive["header"], "interactive['header']", {"type", "text"}, ("type",))
        if header["type"] != "text":
            _invalid("a list's header must be of type text")
        _text(header.get("text"), "interactive['header']['text']", HEADER_LIMIT)
    action = interactive["action"]
    if kind == "button":
        _keys(action, "interactive['action']", {"buttons"}, ("buttons",))
        buttons = action["buttons"]
        if not isinstance(buttons, list) or not 1 <= len(buttons) <= REPLY_BUTTONS_LIMIT:
            _invalid(f"interactive['action']['buttons'] must have 1 to {REPLY_BUTTONS_LIMIT} buttons")
        button_ids, titles = set(), set()
        for index, button in enumerate(buttons):
            where = f"interactive['action']['buttons'][{index}]"
            _keys(button, where, {"type", "reply"}, ("type", "reply"))
            reply = _keys(button["reply"], f"{where}['reply']", {"id", "title"}, ("id", "title"))
            button_ids.add(_text(reply["id"], f"{where}['reply']['id']", BUTTON_ID_LIMIT))
            titles.add(_text(reply["title"], f"{where}['reply']['title']", BUTTON_TITLE_LIMIT))
        if len(titles) != len(buttons):
            _invalid("Buttons titles must be unique")
        if len(button_ids) != len(buttons):
            _invalid("Buttons ids must be unique")
        return
    _keys(action, "interactive['action']", {"button", "sections"}, ("button", "sections"))
    _text(action["button"], "interactive['action']['button']", LIST_BUTTON_LIMIT)
    sections = action["sections"]
    if not isinstance(sections, list) or not 1 <= len(sections) <= LIST_SECTIONS_LIMIT:
        _invalid(f"interactive['action']['sections'] must have 1 to {LIST_SECTIONS_LIMIT} sections")
    rows = 0
    ids: set[str] = set()
    for s_index, section in enumerate(sections):
        where = f"interactive['action']['sections'][{s_index}]"
        _keys(section, where, {"title", "rows"}, ("rows",))
        _text(section.get("title"), f"{where}['title']", ROW_TITLE_LIMIT, required=len(sections) > 1)
        for r_index, row in enumerate(section["rows"]):
            row_where = f"{where}['rows'][{r_index}]"
            _keys(row, row_where, {"id", "title", "description"}, ("id", "title"))
            ids.add(_text(row["id"], f"{row_where}['id']", ROW_ID_LIMIT))
            _text(row["title"], f"{row_where}['title']", ROW_TITLE_LIMIT)
            _text(row.get("description"), f"{row_where}['description']", ROW_DESCRIPTION_LIMIT, required=False)
            rows += 1
    if not 1 <= rows <= LIST_ROWS_LIMIT:
        _invalid(f"a list may have at most {LIST_ROWS_LIMIT} rows in all sections together, got {rows}")
    if len(ids) != rows:
        _invalid("row ids must be unique")


def check_template_request(body: Any) -> dict[str, Any]:
    """Check a ``message_templates`` request the way Meta's review intake does."""
    request = _keys(
        body, "", {"name", "language", "category", "components", "parameter_format", "allow_category_change"}
    )
    for key in ("name", "language", "category", "components"):
        if not request.get(key):
            fail(100, f"(#100) The parameter {key} is required.")
    if not _TEMPLATE_NAME.match(str(request["name"])):
        fail(100, "(#100) Invalid parameter", "name may only have lowercase letters, digits and underscores")
    if request["category"] not in _CATEGORIES:
        fail(100, "(#100) Invalid parameter", f"category must be one of {', '.join(sorted(_CATEGORIES))}")
    body_seen = False
    for index, component in enumerate(request["components"]):
        where = f"components[{index}]"
        kind = str(_keys(component, where, {"type", "format", "text", "example", "buttons"}, ("type",))["type"])
        if kind == "BODY":
            body_seen = True
            text = _text(component.get("text"), f"{where}['text']", BODY_LIMIT)
            count = len(set(re.findall(r"\{\{(\d+)\}\}", text)))
            if count and len((component.get("example") or {}).get("body_text", [[]])[0]) != count:
                fail(100, "(#100) Invalid parameter", f"{where}: body_text examples must give {count} values")
        elif kind in ("HEADER", "FOOTER"):
            _text(component.get("text"), f"{where}['text']", HEADER_LIMIT)
        elif kind == "BUTTONS":
            buttons = component.get("buttons")
            if not isinstance(buttons, list) or not 1 <= len(buttons) <= 10:
                fail(100, "(#100) Invalid parameter", f"{where}: 1 to 10 buttons")
            for b_index, button in enumerate(buttons):
                b_where = f"{where}['buttons'][{b_index}]"
                _keys(button, b_where, {"type", "text", "url", "example"}, ("type", "text"))
                _text(button["text"], f"{b_where}['text']", 25)
        else:
            fail(100, "(#100) Invalid parameter", f"{where}: unknown component type {kind!r}")
    if not body_seen:
        fail(100, "(#100) Invalid parameter", "a template needs a BODY component")
    return request
