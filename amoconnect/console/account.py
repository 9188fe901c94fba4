"""An account's pages: its sources with their state (how the messenger's updates arrive, the last
messages in and out, the last error) and the 50-source limit, its recent conversations with their
newest message and its delivery state, and its dead letters (jobs that ran out of attempts) with a
retry button.

The operator sees every account's; an account's admin only their own: another account's page (and
everything under it) is refused with 403 before anything is read or changed.
"""

from __future__ import annotations

import urllib.parse

import structlog
from starlette.responses import Response

from ..store.registry import AccountRecord
from ..tenants import MAX_SOURCES, Refused
from .parts import ConsoleParts
from .web import Forbidden, Page

__all__ = ["CONVERSATIONS_SHOWN", "DEAD_SHOWN", "AccountPages"]

log = structlog.get_logger("amoconnect.console")

DEAD_SHOWN = 100
"""Dead letters of an account shown on its page (oldest first)."""
CONVERSATIONS_SHOWN = 50
"""Conversations of an account shown on its page (newest message first)."""


class AccountPages:
    """Handlers of an account's pages (wrapped by :meth:`.web.Pages.route`)."""

    def __init__(self, parts: ConsoleParts) -> None:
        self.parts = parts

    def account_of(self, page: Page) -> AccountRecord:
        """The account in the path, if the session may see it (:class:`Forbidden` if not)."""
        name = str(page.request.path_params["account"])
        if not page.session.may_see(name):
            raise Forbidden(f"this session may not see account {name!r}")
        try:
            account = self.parts.tenants.account(name)
        except Refused:
            raise Forbidden(f"no account named {name!r}") from None
        page.domain(account.domain)
        return account

    async def overview(self, page: Page) -> Response:
        account = self.account_of(page)
        sources = sorted(self.parts.tenants.registry.sources(account.name), key=lambda s: s.name)
        store = self.parts.store
        dead = await store.dead_letters(DEAD_SHOWN, scope_id=account.scope_id)
        activity = {a.instance: a for a in await store.source_activity(account.scope_id)}
        titles = {s.name: s.title or s.name for s in sources}
        return page.render(
            "account.html",
            account=account,
            sources=sources,
            activity=activity,
            intake={s.name: self.parts.intake(s.name) for s in sources},
            titles=titles,
            conversations=await store.recent_conversations(account.scope_id, CONVERSATIONS_SHOWN),
            conversations_shown=CONVERSATIONS_SHOWN,
            limit=MAX_SOURCES,
            plugins=sorted(self.parts.tenants.messengers),
            dead=dead,
            dead_shown=DEAD_SHOWN,
            retried=page.request.query_params.get("retried", ""),
        )

    async def retry(self, page: Page) -> Response:
        """POST: one of the account's dead letters back to the queue (another account's id: 404, nothing changed)."""
        account = self.account_of(page)
        text = str(page.request.path_params["dead"])
        moved = await self.parts.store.requeue([int(text)], scope_id=account.scope_id) if text.isdigit() else 0
        if not moved:
            return page.render("error.html", 404, message=page.t("dead.not_found"), detail="")
        log.info("dead letter retried in the console", account=account.name, id=int(text))
        return page.redirect(f"/console/accounts/{urllib.parse.quote(account.name)}?retried={text}")
