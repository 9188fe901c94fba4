"""A small Bot API client on the runtime's shared ``httpx.AsyncClient``, and Telegram's errors → amoconnect's.

Every call is one HTTP request (the relay retries, not this client) answered in Telegram's
envelope ``{"ok": true, "result": ...}`` / ``{"ok": false, "error_code", "description",
"parameters"}``. :func:`error_for` maps a refusal to the neutral failure vocabulary:

=====================================================  ==========================================
Telegram                                               raised
=====================================================  ==========================================
429 (or any ``parameters.retry_after``)                :class:`~amoconnect.errors.RateLimited`
                                                       with ``retry_after`` exactly as given
403 blocked / deactivated / kicked                    ``reason="blocked"`` (amoCRM 901)
403 bot can't initiate conversation with a user        ``reason="no_chat"`` (904): the client never
                                                       started the bot, so there is no chat yet
400 chat not found / user not found / PEER_ID_INVALID  ``reason="no_chat"`` (904)
401 Unauthorized (token revoked)                       ``reason="disabled"`` (902)
5xx, no answer, a body that is not the envelope        ``retryable=True``
anything else                                          ``reason="other"`` (905, Telegram's text)
=====================================================  ==========================================

The bot token is part of every URL; it is scrubbed from every error message.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import msgspec
from amoconnect.errors import MessengerError, RateLimited

__all__ = ["BotApi", "BotApiError", "error_for"]

_BLOCKED = ("blocked", "deactivated", "kicked", "bot can't send messages to the user")
_NEVER_STARTED = "can't initiate conversation"
_NO_CHAT = ("chat not found", "user not found", "peer_id_invalid")


class BotApiError(MessengerError):
    """Telegram refused a call: ``code`` is its ``error_code``, ``description`` its text."""

    code: int

    def __init__(self, description: str, *, code: int, retryable: bool = False, reason: str = "other") -> None:
        super().__init__(description, code=code, retryable=retryable, reason=reason)
        self.code = code


class _Envelope(msgspec.Struct, frozen=True):
    ok: bool
    result: Any = None
    error_code: int | None = None
    description: str = ""
    parameters: dict[str, Any] | None = None


_decode_envelope = msgspec.json.Decoder(_Envelope).decode


def error_for(status: int, description: str, parameters: dict[str, Any] | None = None) -> MessengerError:
    """The exception for a refusal: ``status`` is the ``error_code``, then Telegram's description and parameters."""
    retry_after = (parameters or {}).get("retry_after")
    if status == 429 or isinstance(retry_after, int | float):
        wait = float(retry_after) if isinstance(retry_after, int | float) else 1.0
        return RateLimited(description or "Too Many Requests", retry_after=wait, code=status)
    text = description.lower()
    if status == 403 and _NEVER_STARTED in text:
        return BotApiError(description, code=status, reason="no_chat")
    if status == 403 and any(part in text for part in _BLOCKED):
        return BotApiError(description, code=status, reason="blocked")
    if status == 400 and any(part in text for part in _NO_CHAT):
        return BotApiError(description, code=status, reason="no_chat")
    if status == 401:
        return BotApiError(
            f"{description or 'Unauthorized'}: the bot token was revoked or is wrong; get one from @BotFather",
            code=status,
            reason="disabled",
        )
    if status >= 500:
        return BotApiError(description or f"Telegram answered HTTP {status}", code=status, retryable=True)
    return BotApiError(description or f"Telegram answered HTTP {status}", code=status)


class BotApi:
    """Calls the Bot API of one bot at ``base_url`` (``https://api.telegram.org`` or a fake)."""

    def __init__(self, http: httpx.AsyncClient, base_url: str, token: str) -> None:
        self.http = http
        self.base_url = base_url.rstrip("/")
        self._token = token

    def _scrub(self, text: str) -> str:
        return text.replace(self._token, "<token>")

    def file_url(self, file_path: str) -> str:
        """The download URL of a file (it embeds the token: keep it inside the adapter)."""
        return f"{self.base_url}/file/bot{self._token}/{file_path}"

    async def call(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        files: dict[str, tuple[str, bytes, str]] | None = None,
        http_timeout: float | None = None,
    ) -> Any:
        """Call ``method`` and return its ``result``; raise a :class:`MessengerError` as the module says.

        ``files`` (``{parameter: (file name, bytes, MIME type)}``) makes the request
        ``multipart/form-data``, with nested parameters as JSON strings; otherwise the body is JSON.
        """
        url = f"{self.base_url}/bot{self._token}/{method}"
        extra: dict[str, Any] = {} if http_timeout is None else {"timeout": http_timeout}
        try:
            if files:
                form = {
                    key: value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
                    for key, value in (params or {}).items()
                }
                response = await self.http.post(url, data=form, files=files, **extra)
            else:
                response = await self.http.post(url, json=params or {}, **extra)
        except httpx.TransportError as exc:
            detail = self._scrub(str(exc)) or type(exc).__name__
            raise MessengerError(f"Telegram {method} got no answer: {detail}", retryable=True) from None
        try:
            envelope = _decode_envelope(response.content)
        except msgspec.DecodeError:
            raise error_for(
                response.status_code, f"Telegram answered HTTP {response.status_code} without JSON"
            ) from None
        if envelope.ok:
            return envelope.result
        raise error_for(envelope.error_code or response.status_code, envelope.description, envelope.parameters)

    async def download(self, file_path: str, *, limit: int) -> bytes:
        """The bytes of a file ``getFile`` returned the path of; at most ``limit`` bytes."""
        try:
            response = await self.http.get(self.file_url(file_path), timeout=60.0)
        except httpx.TransportError as exc:
            detail = self._scrub(str(exc)) or type(exc).__name__
            raise MessengerError(f"Telegram file download got no answer: {detail}", retryable=True) from None
        if response.status_code != 200:
            raise MessengerError(
                f"Telegram file download answered HTTP {response.status_code}",
                code=response.status_code,
                retryable=response.status_code >= 500 or response.status_code == 429,
            )
        if len(response.content) > limit:
            raise MessengerError(f"the file is over {limit} bytes", reason="other")
        return response.content
