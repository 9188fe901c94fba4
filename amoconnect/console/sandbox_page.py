"""The sandbox's page, ``/console/sandbox``: both sides of a conversation, live.

Served only by ``amoconnect run --sandbox`` (:mod:`amoconnect.sandbox` adds these routes). On the
left the client's chat in the fake messenger, on the right amoCRM's chat with the client; the
visitor writes as the client on one side and answers as the manager on the other, and watches
each manager's message go sent → delivered → read as the messenger reports it.

- ``GET /console/sandbox``: the page (it works without script: each form posts and comes back).
  Its "install" button starts "sign in with amoCRM" (:mod:`.amocrm_sign_in`) toward the fake
  amoCRM's authorisation page; the page lists the settings of a bot to add to that account.
- ``GET /console/sandbox/state``: both sides as JSON, polled by ``static/sandbox.js``.
- ``POST /console/sandbox/client``, ``POST /console/sandbox/manager``: ``text`` (and ``csrf``) as
  the client or as the manager; an ``Accept: application/json`` request gets JSON back, others a
  redirect to the page.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import msgspec
from starlette.responses import Response

from .web import Page, Pages

__all__ = ["MAX_TEXT", "SandboxPages", "SandboxView", "sandbox_routes"]

MAX_TEXT = 4000
"""Longest text the page sends as one message."""

_encode = msgspec.json.Encoder().encode
_PROBLEMS = ("sandbox.empty", "sandbox.too_long", "sandbox.no_chat")


class SandboxView(Protocol):
    """The sandbox's conversation (:class:`amoconnect.sandbox_chat.SandboxChat`)."""

    async def client_writes(self, text: str) -> None: ...

    async def manager_answers(self, text: str) -> str: ...

    def amocrm_chat(self) -> str | None: ...

    def messenger_side(self) -> Sequence[Any]: ...

    def amocrm_side(self) -> Sequence[Any]: ...


class SandboxPages:
    """The page's handlers (wrapped by :meth:`Pages.route`: session, language, CSRF)."""

    def __init__(self, view: SandboxView, plugin: str, bot_settings: Mapping[str, Any]) -> None:
        self.view = view
        self.plugin = plugin
        self.bot_settings = bot_settings

    async def page(self, page: Page) -> Response:
        problem = page.request.query_params.get("problem", "")
        return page.render(
            "sandbox.html",
            plugin=self.plugin,
            bot_settings=self.bot_settings,
            state=self._state(),
            problem=problem if problem in _PROBLEMS else "",
            limit=MAX_TEXT,
        )

    async def state(self, page: Page) -> Response:
        return page.answer(Response(_encode(self._state()), media_type="application/json"))

    async def client(self, page: Page) -> Response:
        return await self._send(page, "client")

    async def manager(self, page: Page) -> Response:
        return await self._send(page, "manager")

    async def _send(self, page: Page, side: str) -> Response:
        text = page.request.state.form.get("text", "").strip()
        problem = ""
        if not text:
            problem = "sandbox.empty"
        elif len(text) > MAX_TEXT:
            problem = "sandbox.too_long"
        elif side == "client":
            await self.view.client_writes(text)
        else:
            try:
                await self.view.manager_answers(text)
            except LookupError:
                problem = "sandbox.no_chat"
        wants_json = "application/json" in page.request.headers.get("accept", "")
        if wants_json:
            body = _encode({"ok": not problem, "error": page.t(problem, limit=MAX_TEXT) if problem else ""})
            return page.answer(Response(body, status_code=400 if problem else 200, media_type="application/json"))
        return page.redirect(f"/console/sandbox?problem={problem}" if problem else "/console/sandbox")

    def _state(self) -> dict[str, Any]:
        return {
            "messenger": [dataclasses.asdict(line) for line in self.view.messenger_side()],
            "amocrm": [dataclasses.asdict(line) for line in self.view.amocrm_side()],
            "can_answer": self.view.amocrm_chat() is not None,
        }


def sandbox_routes(
    pages: Pages, view: SandboxView, plugin: str, *, bot_settings: Mapping[str, Any]
) -> list[tuple[str, Any, tuple[str, ...]]]:
    """The page's routes as ``(path, endpoint, methods)``, for :func:`amoconnect.hookspecs.startup_routes`;
    ``bot_settings``: what to fill in to add a bot to an account installed from the page."""
    handlers = SandboxPages(view, plugin, bot_settings)
    return [
        ("/console/sandbox", pages.route(handlers.page), ("GET",)),
        ("/console/sandbox/state", pages.route(handlers.state), ("GET",)),
        ("/console/sandbox/client", pages.route(handlers.client), ("POST",)),
        ("/console/sandbox/manager", pages.route(handlers.manager), ("POST",)),
    ]
