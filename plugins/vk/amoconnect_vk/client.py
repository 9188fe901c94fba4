"""A small VK API client on the runtime's shared ``httpx.AsyncClient``.

Every call is one ``POST {api_url}/method/{name}`` with form parameters, ``v=5.199`` and the
community token in ``Authorization: Bearer``; VK answers HTTP 200 with ``{"response": ...}`` or
``{"error": {"error_code", "error_msg", "request_params"}}``, which :func:`~amoconnect_vk.vkapi.error_for`
turns into the neutral failure vocabulary. The relay retries, not this client.

All calls of one community token share VK's limit of 20 requests a second: the limiter the
adapter gets from its context (the store's, so every process serving the community shares it)
spaces them evenly (50 ms apart, so a sliding one-second window never sees more than 20), and
a rate-limit error (6, 9, 29) holds every call for its pause. :meth:`VkApi.execute` runs up to
25 calls in one request (VKScript ``return [API.a.b({...}), ...];``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Final

import httpx
from amoconnect.errors import MessengerError, RateLimited
from amoconnect.ratelimit import Limiter

from .vkapi import API_VERSION, VkApiError, error_for

__all__ = ["EXECUTE_LIMIT", "VkApi"]

EXECUTE_LIMIT: Final = 25
"""Calls one ``execute`` may make."""


def _form(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, list | tuple):
        return ",".join(str(item) for item in value)
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


class VkApi:
    """Calls the VK API at ``base_url`` (``https://api.vk.com`` or a fake) with one community token.

    ``limiter`` spaces the token's calls (key ``""``); a rate-limit error penalizes it.
    """

    def __init__(
        self, http: httpx.AsyncClient, base_url: str, token: str, *, limiter: Limiter, version: str = API_VERSION
    ) -> None:
        self.http = http
        self.base_url = base_url.rstrip("/")
        self.version = version
        self._token = token
        self.limiter = limiter

    def _scrub(self, text: str) -> str:
        return text.replace(self._token, "<token>") if self._token else text

    async def _request(self, method: str, params: dict[str, Any], http_timeout: float | None) -> dict[str, Any]:
        await self.limiter.acquire()
        form = {key: _form(value) for key, value in params.items() if value is not None}
        form["v"] = self.version
        headers = {"Authorization": f"Bearer {self._token}"}
        extra: dict[str, Any] = {} if http_timeout is None else {"timeout": http_timeout}
        try:
            response = await self.http.post(f"{self.base_url}/method/{method}", data=form, headers=headers, **extra)
        except httpx.TransportError as exc:
            detail = self._scrub(str(exc)) or type(exc).__name__
            raise MessengerError(f"VK {method} got no answer: {detail}", retryable=True) from None
        if response.status_code != 200:
            raise MessengerError(
                f"VK {method} answered HTTP {response.status_code}",
                code=response.status_code,
                retryable=response.status_code >= 500 or response.status_code == 429,
            )
        try:
            body = response.json()
        except ValueError:
            raise MessengerError(f"VK {method} answered without JSON", retryable=True) from None
        if not isinstance(body, dict):
            raise MessengerError(f"VK {method} answered {type(body).__name__}, not an object", retryable=True)
        error = body.get("error")
        if isinstance(error, dict):
            refused = error_for(int(error.get("error_code") or 0), str(error.get("error_msg") or ""))
            if isinstance(refused, RateLimited):
                await self.limiter.penalize("", refused.retry_after)
            raise refused
        if "response" not in body:
            raise MessengerError(f"VK {method} answered neither response nor error", retryable=True)
        return body

    async def call(
        self, method: str, params: dict[str, Any] | None = None, *, http_timeout: float | None = None
    ) -> Any:
        """Call ``method`` (``messages.send``) and return its ``response``; raise a :class:`MessengerError`.

        Lists are sent comma-separated, dicts as JSON, booleans as ``1``/``0``; ``None`` is left out.
        """
        return (await self._request(method, params or {}, http_timeout))["response"]

    async def execute(self, calls: Sequence[tuple[str, dict[str, Any]]]) -> list[Any]:
        """Run up to 25 calls in one request; each call's response, or the :class:`MessengerError` it failed with."""
        if not 0 < len(calls) <= EXECUTE_LIMIT:
            raise ValueError(f"execute runs 1 to {EXECUTE_LIMIT} calls, not {len(calls)}")
        code = (
            "return ["
            + ",".join(
                f"API.{method}({json.dumps({k: v for k, v in params.items() if v is not None}, ensure_ascii=False)})"
                for method, params in calls
            )
            + "];"
        )
        body = await self._request("execute", {"code": code}, None)
        results = body["response"]
        if not isinstance(results, list) or len(results) != len(calls):
            raise MessengerError("VK execute answered a result of the wrong shape", retryable=True)
        errors = iter(body.get("execute_errors") or [])
        out: list[Any] = []
        for result in results:
            if result is False:
                failed: dict[str, Any] = next(errors, {})
                out.append(error_for(int(failed.get("error_code") or 0), str(failed.get("error_msg") or "")))
            else:
                out.append(result)
        return out

    async def upload(self, url: str, field: str, file: tuple[str, bytes, str]) -> dict[str, Any]:
        """POST a file to an upload server ``url`` (multipart, in ``field``); the server's JSON answer."""
        await self.limiter.acquire()
        try:
            response = await self.http.post(url, files={field: file}, timeout=120.0)
        except httpx.TransportError as exc:
            raise MessengerError(f"VK upload server got no answer: {type(exc).__name__}", retryable=True) from None
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code != 200 or not isinstance(body, dict):
            raise MessengerError(
                f"VK upload server answered HTTP {response.status_code}", retryable=response.status_code >= 500
            )
        if body.get("error"):
            raise VkApiError(f"VK upload server refused the file: {body['error']}", code=0)
        return body

    async def get(self, url: str, params: dict[str, Any], *, http_timeout: float) -> Any:
        """A plain GET answered with JSON (the Long Poll server)."""
        try:
            response = await self.http.get(url, params=params, timeout=http_timeout)
        except httpx.TransportError as exc:
            raise MessengerError(f"VK Long Poll got no answer: {type(exc).__name__}", retryable=True) from None
        if response.status_code != 200:
            raise MessengerError(f"VK Long Poll answered HTTP {response.status_code}", retryable=True)
        try:
            return response.json()
        except ValueError:
            raise MessengerError("VK Long Poll answered without JSON", retryable=True) from None
