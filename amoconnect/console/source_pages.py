"""An account's sources: add one through the form its plugin's settings schema makes (:mod:`.forms`),
change, test or remove one. The operations are :class:`amoconnect.tenants.Tenants`' (the admin API's);
each answer shows the operation's steps and how each went."""

from __future__ import annotations

from typing import Any

import structlog
from starlette.responses import Response

from ..tenants import MAX_SOURCES, Outcome, Refused, SourceChange, SourceSpec
from .account import AccountPages
from .forms import Field, fields_of, settings_of
from .web import Forbidden, Page

__all__ = ["SourcePages"]

log = structlog.get_logger("amoconnect.console")


class SourcePages(AccountPages):
    """Handlers of the source pages under ``/console/accounts/{account}/sources``."""

    def _fields(self, plugin: str) -> list[Field]:
        cls = self.parts.tenants.messengers.get(plugin)
        if cls is None:
            raise Forbidden(f"no plugin named {plugin!r} is installed")
        return fields_of(cls.settings)

    async def new(self, page: Page) -> Response:
        """The add form: the plugin's choice, then its settings' fields."""
        account = self.account_of(page)
        plugin = page.request.query_params.get("plugin", "")
        plugins = sorted(self.parts.tenants.messengers)
        fields = self._fields(plugin) if plugin else []
        return self._form(page, account.name, plugin, plugins, fields, {}, [])

    def _form(
        self,
        page: Page,
        account: str,
        plugin: str,
        plugins: list[str],
        fields: list[Field],
        values: dict[str, Any],
        problems: list[str],
        status: int = 200,
    ) -> Response:
        count = len(self.parts.tenants.registry.sources(account))
        return page.render(
            "source_new.html",
            status,
            account_name=account,
            plugin=plugin,
            plugins=plugins,
            fields=fields,
            values=values,
            problems=problems,
            count=count,
            limit=MAX_SOURCES,
        )

    async def add(self, page: Page) -> Response:
        account = self.account_of(page)
        form: dict[str, str] = page.request.state.form
        plugin = form.get("plugin", "")
        fields = self._fields(plugin)
        settings, problems = settings_of(fields, form)
        spec = SourceSpec(
            name=form.get("name", "").strip(),
            plugin=plugin,
            external_id=form.get("external_id", "").strip(),
            title=form.get("title", "").strip(),
            default=form.get("default") is not None,
            settings=settings,
        )
        shown = {k: v for k, v in settings.items() if not any(f.name == k and f.kind == "secret" for f in fields)}
        values = {"name": spec.name, "external_id": spec.external_id, "title": spec.title, **shown}
        plugins = sorted(self.parts.tenants.messengers)
        if problems:
            return self._form(page, account.name, plugin, plugins, fields, values, problems, 400)
        try:
            outcome = await self.parts.tenants.add_source(account.name, spec)
        except Refused as exc:
            return self._form(page, account.name, plugin, plugins, fields, values, exc.problems, exc.status)
        log.info("source added in the console", account=account.name, source=spec.name, ok=outcome.ok)
        return self._outcome(page, account.name, "outcome.added", spec.name, outcome)

    def _outcome(self, page: Page, account: str, what: str, source: str, outcome: Outcome) -> Response:
        return page.render(
            "outcome.html", 200 if outcome.ok else 502, account_name=account, what=what, source=source, outcome=outcome
        )

    async def show(self, page: Page) -> Response:
        """A source's change form, with test and remove."""
        account = self.account_of(page)
        source = self._source(page, account.name)
        return page.render(
            "source.html",
            account_name=account.name,
            source=source,
            fields=self._fields(source.plugin) if source.plugin in self.parts.tenants.messengers else [],
            problems=[],
        )

    def _source(self, page: Page, account: str) -> Any:
        try:
            return self.parts.tenants.source(str(page.request.path_params["source"]), account=account)
        except Refused as exc:
            raise Forbidden(str(exc)) from None

    async def change(self, page: Page) -> Response:
        account = self.account_of(page)
        source = self._source(page, account.name)
        form: dict[str, str] = page.request.state.form
        fields = self._fields(source.plugin)
        settings, problems = settings_of(fields, form, source.settings)
        change = SourceChange(title=form.get("title", "").strip(), default=form.get("default") is not None)
        if source.settings != settings:
            change.settings = settings
        if not problems:
            try:
                outcome = await self.parts.tenants.change_source(source.name, change, account=account.name)
            except Refused as exc:
                problems = exc.problems
            else:
                log.info("source changed in the console", account=account.name, source=source.name, ok=outcome.ok)
                return self._outcome(page, account.name, "outcome.changed", source.name, outcome)
        return page.render(
            "source.html", 400, account_name=account.name, source=source, fields=fields, problems=problems
        )

    async def test(self, page: Page) -> Response:
        account = self.account_of(page)
        source = self._source(page, account.name)
        try:
            outcome = await self.parts.tenants.test_source(source.name, account=account.name)
        except Refused as exc:
            raise Forbidden(str(exc)) from None
        return self._outcome(page, account.name, "outcome.tested", source.name, outcome)

    async def remove(self, page: Page) -> Response:
        """Without ``confirm``: the confirmation page; with it, the source removed."""
        account = self.account_of(page)
        source = self._source(page, account.name)
        if page.request.state.form.get("confirm") != "yes":
            return page.render("source_remove.html", account_name=account.name, source=source)
        try:
            outcome = await self.parts.tenants.remove_source(source.name, account=account.name)
        except Refused as exc:
            raise Forbidden(str(exc)) from None
        log.info("source removed in the console", account=account.name, source=source.name, ok=outcome.ok)
        return self._outcome(page, account.name, "outcome.removed", source.name, outcome)
