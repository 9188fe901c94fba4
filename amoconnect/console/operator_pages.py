"""The operator's pages: sign-in with the admin API's token, and every account with its state, paginated."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterable

import structlog
from starlette.responses import Response

from ..signing import same_secret
from ..store.registry import AccountRecord, SourceRecord
from .parts import ConsoleParts
from .samples import chart
from .web import Forbidden, Page

__all__ = ["PAGE_SIZE", "OperatorPages", "Overview", "page_of"]

log = structlog.get_logger("amoconnect.console")

PAGE_SIZE = 50
"""Accounts on one page of the overview."""
STATES = ("active", "needs_reauth", "disconnected")


def page_of(items: list[AccountRecord], number: int, size: int = PAGE_SIZE) -> tuple[list[AccountRecord], int]:
    """Page ``number`` (from 1, clamped) of ``items`` and how many pages there are."""
    pages = max(1, math.ceil(len(items) / size))
    number = min(max(1, number), pages)
    return items[(number - 1) * size : number * size], pages


@dataclasses.dataclass(frozen=True)
class Overview:
    """What every page of the overview shares, as of one registry revision (10,000 accounts and 50,000
    sources take milliseconds to sort and scan: done once per change, not once per request)."""

    revision: int
    accounts: list[AccountRecord]
    """Every account, by name."""
    by_state: dict[str, list[AccountRecord]]
    failing: list[SourceRecord]
    """The failing sources, by account and name."""

    @classmethod
    def of(cls, revision: int, accounts: Iterable[AccountRecord], sources: Iterable[SourceRecord]) -> Overview:
        ordered = sorted(accounts, key=lambda a: a.name)
        by_state: dict[str, list[AccountRecord]] = {}
        for account in ordered:
            by_state.setdefault(account.state, []).append(account)
        failing = sorted((s for s in sources if s.state == "failing"), key=lambda s: (s.account, s.name))
        return cls(revision, ordered, by_state, failing)


def _number(text: str) -> int:
    return int(text) if text.isdigit() and len(text) < 9 else 1


class OperatorPages:
    """Handlers of the operator's pages (wrapped by :meth:`.web.Pages.route`)."""

    def __init__(self, parts: ConsoleParts) -> None:
        self.parts = parts
        self._cached: Overview | None = None

    def _operator(self, page: Page) -> None:
        if page.session.role != "operator":
            raise Forbidden("only the operator sees this page")

    async def sign_in_form(self, page: Page) -> Response:
        return page.render(
            "sign_in.html",
            operator=bool(self.parts.admin_token),
            amocrm=self.parts.can_authorize,
            problem="",
        )

    async def sign_in(self, page: Page) -> Response:
        token = page.request.state.form.get("token", "").strip()
        if not self.parts.admin_token or not same_secret(token, self.parts.admin_token):
            log.warning("console sign-in refused", reason="bad_token")
            return page.render(
                "sign_in.html",
                401,
                operator=bool(self.parts.admin_token),
                amocrm=self.parts.can_authorize,
                problem=page.t("sign_in.wrong_token"),
            )
        page.session = self.parts.codec.signed_in("operator", "", page.session)
        log.info("operator signed in to the console")
        return page.redirect("/console/operator/accounts")

    async def sign_out(self, page: Page) -> Response:
        page.session = self.parts.codec.fresh()  # signed out: a visitor again, with a new CSRF token
        return page.redirect("/console/sign-in")

    def _overview(self) -> Overview:
        """The accounts sorted, counted by state, and the failing sources: computed once per registry revision."""
        registry = self.parts.tenants.registry
        if self._cached is None or self._cached.revision != registry.revision:
            self._cached = Overview.of(registry.revision, registry.accounts(), registry.sources())
        return self._cached

    async def accounts(self, page: Page) -> Response:
        self._operator(page)
        query = page.request.query_params
        state = query.get("state", "")
        registry = self.parts.tenants.registry
        overview = self._overview()
        chosen = overview.by_state.get(state, []) if state in STATES else overview.accounts
        shown, pages = page_of(chosen, _number(query.get("page", "1")))
        number = min(max(1, _number(query.get("page", "1"))), pages)
        rows = [(a, len(registry.sources(a.name))) for a in shown]
        return page.render(
            "operator_accounts.html",
            rows=rows,
            counts={s: len(overview.by_state.get(s, ())) for s in STATES},
            state=state if state in STATES else "",
            states=STATES,
            number=number,
            pages=pages,
            total=len(chosen),
            failing=overview.failing[:PAGE_SIZE],
            failing_count=len(overview.failing),
            now=time.time(),
            chart=chart(self.parts.samples.recent()) if self.parts.samples is not None else None,
        )
