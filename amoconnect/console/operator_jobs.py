"""The operator's dead letters across accounts (filter by account, retry, purge with a confirmation
step) and the installed plugins with their capabilities."""

from __future__ import annotations

import urllib.parse

import structlog
from starlette.responses import Response

from .parts import ConsoleParts
from .web import Forbidden, Page

__all__ = ["DEAD_PAGE", "OperatorJobs"]

log = structlog.get_logger("amoconnect.console")

DEAD_PAGE = 200
"""Dead letters shown at once (oldest first); retry or purge them to see the next."""


class OperatorJobs:
    """Handlers of ``/console/operator/dead`` and ``/console/operator/plugins``."""

    def __init__(self, parts: ConsoleParts) -> None:
        self.parts = parts

    def _operator(self, page: Page) -> None:
        if page.session.role != "operator":
            raise Forbidden("only the operator sees this page")

    def _scope(self, account: str) -> str | None:
        """The scope id of the filter's account (None: every account); :class:`Forbidden` if unknown."""
        if not account:
            return None
        found = self.parts.tenants.registry.account(account)
        if found is None:
            raise Forbidden(f"no account named {account!r}")
        return found.scope_id

    async def dead(self, page: Page) -> Response:
        self._operator(page)
        account = page.request.query_params.get("account", "")
        scope_id = self._scope(account)
        letters = await self.parts.store.dead_letters(DEAD_PAGE, scope_id=scope_id)
        names = {a.scope_id: a.name for a in self.parts.tenants.registry.accounts()}
        counts = await self.parts.store.counts()
        return page.render(
            "operator_dead.html",
            letters=letters,
            names=names,
            account=account,
            total=counts["dead"],
            shown=DEAD_PAGE,
            done=page.request.query_params.get("done", ""),
            accounts=sorted(names.values()),
        )

    def _ids(self, page: Page) -> list[int] | None:
        """The one dead letter a row's button names, or None for every one the filter shows."""
        text = page.request.state.form.get("id", "")
        if text == "":
            return None
        if not text.isdigit():
            raise Forbidden(f"{text!r} is not a dead letter's id")
        return [int(text)]

    def _back(self, account: str, done: str) -> str:
        query = urllib.parse.urlencode({k: v for k, v in (("account", account), ("done", done)) if v})
        return f"/console/operator/dead?{query}"

    async def retry(self, page: Page) -> Response:
        self._operator(page)
        account = page.request.state.form.get("account", "")
        ids = self._ids(page)
        moved = await self.parts.store.requeue(ids, scope_id=self._scope(account))
        log.info("dead letters retried in the console", count=moved, account=account or None, ids=ids)
        return page.redirect(self._back(account, f"retried:{moved}"))

    async def purge(self, page: Page) -> Response:
        """Without ``confirm``: the confirmation page; with it, the dead letters deleted for good."""
        self._operator(page)
        form = page.request.state.form
        account = form.get("account", "")
        ids = self._ids(page)
        scope_id = self._scope(account)
        if form.get("confirm") != "yes":
            count = len(ids) if ids is not None else len(await self.parts.store.dead_letters(10**9, scope_id=scope_id))
            return page.render("operator_purge.html", account=account, id=form.get("id", ""), count=count)
        gone = await self.parts.store.purge(ids, scope_id=scope_id)
        log.warning("dead letters purged in the console", count=gone, account=account or None, ids=ids)
        return page.redirect(self._back(account, f"purged:{gone}"))

    async def plugins(self, page: Page) -> Response:
        self._operator(page)
        plugins = [
            (name, sorted(c.value for c in cls.capabilities))
            for name, cls in sorted(self.parts.tenants.messengers.items())
        ]
        in_use: dict[str, int] = {}
        for source in self.parts.tenants.registry.sources():
            in_use[source.plugin] = in_use.get(source.plugin, 0) + 1
        return page.render("operator_plugins.html", plugins=plugins, in_use=in_use)
