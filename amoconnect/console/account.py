"""An account's pages: its sources with their state and the 50-source limit.

The operator sees every account's; an account's admin only their own: another account's page (and
everything under it) is refused with 403 before anything is read or changed.
"""

from __future__ import annotations

from starlette.responses import Response

from ..store.registry import AccountRecord
from ..tenants import MAX_SOURCES, Refused
from .parts import ConsoleParts
from .web import Forbidden, Page

__all__ = ["AccountPages"]


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
        return page.render(
            "account.html",
            account=account,
            sources=sources,
            limit=MAX_SOURCES,
            plugins=sorted(self.parts.tenants.messengers),
        )
