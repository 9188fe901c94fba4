"""The WhatsApp Cloud API (Graph API) as the adapter speaks it: limits, error codes and a small client.

Every request carries ``Authorization: Bearer <token>``; errors come back in Graph's envelope
``{"error": {"message", "type", "code", "error_subcode"?, "error_data"?: {"details"}, "fbtrace_id",
"is_transient"?}}``. :func:`send_error` turns one into the :class:`~amoconnect.errors.MessengerError`
the core understands (retryable, rate limited, or failed for a neutral reason), and
:func:`status_failure` does the same for the ``errors`` of a ``failed`` status webhook.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import httpx
import msgspec
from amoconnect.errors import MessengerError, RateLimited, WindowClosed
from amoconnect.model import FailureReason

__all__ = [
    "BODY_LIMIT",
    "BUTTON_ID_LIMIT",
    "BUTTON_TITLE_LIMIT",
    "CAPTION_LIMIT",
    "DEFAULT_API_URL",
    "DEFAULT_API_VERSION",
    "ERROR_REASONS",
    "HEADER_LIMIT",
    "LIST_BUTTON_LIMIT",
    "LIST_ROWS_LIMIT",
    "LIST_SECTIONS_LIMIT",
    "RATE_WAITS",
    "REPLY_BUTTONS_LIMIT",
    "ROW_DESCRIPTION_LIMIT",
    "ROW_ID_LIMIT",
    "ROW_TITLE_LIMIT",
    "TEXT_LIMIT",
    "WINDOW_CLOSED_TEXT",
    "GraphApi",
    "GraphError",
    "reason_for",
    "send_error",
    "status_failure",
]

DEFAULT_API_URL: Final = "https://graph.facebook.com"
DEFAULT_API_VERSION: Final = "v23.0"

TEXT_LIMIT: Final = 4096
"""Characters of a text message body."""
CAPTION_LIMIT: Final = 1024
"""Characters of a media caption."""
BODY_LIMIT: Final = 1024
"""Characters of an interactive message's body."""
HEADER_LIMIT: Final = 60
"""Characters of an interactive header or footer."""
LIST_BUTTON_LIMIT: Final = 20
"""Characters of the button that opens a list."""
LIST_SECTIONS_LIMIT: Final = 10
LIST_ROWS_LIMIT: Final = 10
"""Rows of a list, all sections together."""
ROW_TITLE_LIMIT: Final = 24
"""Characters of a row title, and of a section title."""
ROW_DESCRIPTION_LIMIT: Final = 72
ROW_ID_LIMIT: Final = 200
REPLY_BUTTONS_LIMIT: Final = 3
BUTTON_TITLE_LIMIT: Final = 20
BUTTON_ID_LIMIT: Final = 256

WINDOW_CLOSED_TEXT: Final = "24-hour window closed, send a template"
"""What the manager reads when WhatsApp refuses free text outside the customer service window."""

RATE_WAITS: Final[Mapping[int, float]] = {4: 60.0, 80007: 60.0, 130429: 1.0, 131056: 6.0}
"""Rate limit codes → seconds to wait before trying again (Meta sends no Retry-After): the app's
call limit, the WABA's, the number's throughput, and the pair rate (about 1 message per 6 s to a user)."""
_RETRY_CODES: Final = frozenset({1, 2, 131000, 131016, 131057, 133004})
"""Transient errors: unknown, service unavailable, maintenance, server temporarily unavailable."""
_DISABLED_CODES: Final = frozenset({0, 3, 10, 190, 368, 131031, 131042, 133010})
"""The token, the permissions or the account stop every send: the integration is disabled (902)."""

WINDOW_CODES: Final = frozenset({131047, 470})
"""The 24-hour customer service window is closed: 131047 "Re-engagement message", and 470, its
older form that some numbers still get; the same case, the same status and text for the manager."""

ERROR_REASONS: Final[Mapping[str, FailureReason]] = {
    "131026": "no_chat",
    **{str(code): "window_closed" for code in sorted(WINDOW_CODES)},
    "130429": "rate_limited",
    "131056": "rate_limited",
    "4": "rate_limited",
    "80007": "rate_limited",
    **{str(code): "disabled" for code in sorted(_DISABLED_CODES)},
}
"""Meta's error codes → neutral failure reasons (the adapter's ``error_reasons``)."""

_TEMPLATE_ERRORS: Final = range(132000, 132100)


class GraphError(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The ``error`` object of a Graph API answer, or one entry of a status webhook's ``errors``."""

    code: int = 0
    message: str = ""
    title: str = ""
    type: str = ""
    error_subcode: int | None = None
    error_data: dict[str, Any] | None = None
    fbtrace_id: str | None = None
    is_transient: bool | None = None
    error_user_title: str | None = None
    error_user_msg: str | None = None
    href: str | None = None

    @property
    def details(self) -> str:
        """``error_data.details``, or ``""``."""
        details = (self.error_data or {}).get("details")
        return details if isinstance(details, str) else ""

    @property
    def summary(self) -> str:
        """Meta's title (or message) and details in one line, with the code."""
        head = self.title or self.message or "WhatsApp refused the message"
        details = self.details
        text = f"{head}: {details}" if details and details not in head else head
        return f"{text} ({self.code})" if self.code else text


def reason_for(code: int) -> FailureReason:
    """The neutral failure reason of a Meta error code."""
    return ERROR_REASONS.get(str(code), "other")


def _text(error: GraphError) -> str:
    if error.code in WINDOW_CODES:
        return WINDOW_CLOSED_TEXT
    if error.code == 131026:
        return f"WhatsApp cannot deliver to this number (not on WhatsApp, or an old app): {error.summary}"
    if error.code in _TEMPLATE_ERRORS:
        return f"WhatsApp refused the template: {error.summary}"
    return error.summary


def status_failure(error: GraphError | None) -> tuple[FailureReason, str, str | None]:
    """Reason, manager's text and error code of a ``failed`` status webhook's first error."""
    if error is None:
        return "other", "WhatsApp reported the message as failed without saying why", None
    return reason_for(error.code), _text(error), str(error.code)


def send_error(
    status: int, body: bytes, headers: httpx.Headers | None = None, waits: Mapping[int, float] = RATE_WAITS
) -> MessengerError:
    """The :class:`MessengerError` of a refused Graph API request (HTTP ``status``, raw ``body``).

    ``waits`` gives the pause of each rate limit code when the answer has no ``Retry-After``.
    """
    try:
        envelope = msgspec.json.decode(body, type=dict[str, Any])
        error = msgspec.convert(envelope.get("error"), GraphError)
    except (msgspec.DecodeError, msgspec.ValidationError):
        text = body.decode(errors="replace")[:300]
        retryable = status == 429 or status >= 500
        return MessengerError(f"WhatsApp answered HTTP {status}: {text}", code=status, retryable=retryable)
    code = error.code
    retry_after = _retry_after(headers)
    if code in RATE_WAITS or status == 429:
        wait = retry_after if retry_after is not None else waits.get(code, 5.0)
        return RateLimited(f"WhatsApp is throttling: {error.summary}", retry_after=wait, code=code)
    if code in WINDOW_CODES:
        return WindowClosed(WINDOW_CLOSED_TEXT, code=code)
    if status >= 500 or code in _RETRY_CODES or error.is_transient:
        return MessengerError(f"WhatsApp is unavailable: {error.summary}", code=code, retryable=True)
    if code == 100 and error.error_subcode == 33:
        return MessengerError(
            f"WhatsApp does not know the phone_number_id or the token cannot use it: {error.summary}",
            code=code,
            reason="disabled",
        )
    return MessengerError(_text(error), code=code, reason=reason_for(code))


def _retry_after(headers: httpx.Headers | None) -> float | None:
    value = headers.get("retry-after") if headers is not None else None
    try:
        return max(float(value), 0.0) if value is not None else None
    except ValueError:
        return None


class GraphApi:
    """Calls of one phone number's token to the Graph API at ``{api_url}/{version}``."""

    def __init__(self, http: httpx.AsyncClient, api_url: str, version: str, token: str) -> None:
        self.http = http
        self.base = f"{api_url.rstrip('/')}/{version.strip('/')}"
        self.token = token
        self.rate_waits: dict[int, float] = dict(RATE_WAITS)
        """Pause after each rate limit code (tests shorten them)."""

    @property
    def auth(self) -> dict[str, str]:
        """The bearer header."""
        return {"Authorization": f"Bearer {self.token}"}

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, str] | None = None,
        files: Mapping[str, Any] | None = None,
        data: Mapping[str, str] | None = None,
        wait: float = 30.0,
    ) -> Any:
        """Send one request (``wait``: its timeout in seconds); the decoded answer, or :func:`send_error`'s error."""
        url = f"{self.base}/{path.lstrip('/')}"
        content = msgspec.json.encode(json) if json is not None else None
        headers = dict(self.auth)
        if content is not None:
            headers["Content-Type"] = "application/json"
        try:
            response = await self.http.request(
                method, url, content=content, params=params, files=files, data=data, headers=headers, timeout=wait
            )
        except httpx.TransportError as exc:
            raise MessengerError(f"WhatsApp is not reachable: {exc!r}", retryable=True) from None
        if response.status_code >= 400:
            raise send_error(response.status_code, response.content, response.headers, self.rate_waits)
        try:
            return msgspec.json.decode(response.content)
        except msgspec.DecodeError:
            raise MessengerError(
                f"WhatsApp answered HTTP {response.status_code} with a body that is not JSON", retryable=True
            ) from None

    async def download(self, url: str, *, limit: int, wait: float = 60.0) -> tuple[bytes, str | None]:
        """The bytes behind a media URL (it needs the same token), and their content type."""
        try:
            response = await self.http.get(url, headers=self.auth, timeout=wait, follow_redirects=True)
        except httpx.TransportError as exc:
            raise MessengerError(f"downloading WhatsApp media failed: {exc!r}", retryable=True) from None
        if response.status_code >= 400:
            raise send_error(response.status_code, response.content, response.headers)
        if len(response.content) > limit:
            raise MessengerError(f"WhatsApp media of {len(response.content)} bytes is over the {limit} byte limit")
        content_type = response.headers.get("content-type", "").split(";")[0].strip() or None
        return response.content, content_type
