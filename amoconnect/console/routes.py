"""The console's routes under ``/console/`` (README "Console").

- ``GET /console/``: to the signed-in person's first page, or to sign-in.
- ``GET|POST /console/sign-in``: the operator's token form; ``POST /console/sign-in/amocrm``: "sign in with amoCRM".
- ``POST /console/sign-out``, ``POST /console/language``: sign out; switch the language.
- ``GET /console/operator/accounts``: every account with its state, paginated (``?page=&state=``).
- ``GET /console/operator/dead?account=``, ``POST /console/operator/dead/retry|purge``: dead letters
  across accounts (purge asks for a confirmation first); ``GET /console/operator/plugins``.
- ``GET /console/accounts/{account}``: an account's sources and dead letters;
  ``POST /console/accounts/{account}/dead/{id}/retry``.
- ``GET /console/accounts/{account}/sources/new?plugin=``, ``POST /console/accounts/{account}/sources``:
  the form its plugin's settings schema makes, and adding the source.
- ``GET|POST /console/accounts/{account}/sources/{source}``, ``POST .../test``, ``POST .../remove``
  (which asks for a confirmation first).
- ``GET /console/static/{file}``: the stylesheet and script shipped in the package.
"""

from __future__ import annotations

import urllib.parse
from importlib import resources

from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from .amocrm_sign_in import AmoCRMSignIn
from .i18n import LANGUAGES
from .operator_jobs import OperatorJobs
from .operator_pages import OperatorPages
from .parts import ConsoleParts
from .source_pages import SourcePages
from .web import Page, Pages, origin_of

__all__ = ["Console", "console_routes"]


class Console:
    """The console's routes and its side of the OAuth callback (:attr:`sign_in`)."""

    def __init__(self, parts: ConsoleParts) -> None:
        self.parts = parts
        self.pages = Pages(parts.codec, form_origins=origin_of(parts.authorize_url))
        self.sign_in = AmoCRMSignIn(parts, self.pages)

    def routes(self) -> list[BaseRoute]:
        pages, operator, jobs = self.pages, OperatorPages(self.parts), OperatorJobs(self.parts)
        sources = SourcePages(self.parts)
        static = StaticFiles(directory=str(resources.files(__package__).joinpath("static")))
        return [
            Route("/console/", pages.route(_home), methods=["GET"]),
            Route("/console/sign-in", pages.route(operator.sign_in_form), methods=["GET"]),
            Route("/console/sign-in", pages.route(operator.sign_in), methods=["POST"]),
            Route("/console/sign-in/amocrm", pages.route(self.sign_in.start), methods=["POST"]),
            Route("/console/sign-out", pages.route(operator.sign_out), methods=["POST"]),
            Route("/console/language", pages.route(_language), methods=["POST"]),
            Route("/console/operator/accounts", pages.route(operator.accounts, signed_in=True), methods=["GET"]),
            Route("/console/operator/dead", pages.route(jobs.dead, signed_in=True), methods=["GET"]),
            Route("/console/operator/dead/retry", pages.route(jobs.retry, signed_in=True), methods=["POST"]),
            Route("/console/operator/dead/purge", pages.route(jobs.purge, signed_in=True), methods=["POST"]),
            Route("/console/operator/plugins", pages.route(jobs.plugins, signed_in=True), methods=["GET"]),
            Route("/console/accounts/{account}", pages.route(sources.overview, signed_in=True), methods=["GET"]),
            Route(
                "/console/accounts/{account}/dead/{dead}/retry",
                pages.route(sources.retry, signed_in=True),
                methods=["POST"],
            ),
            Route("/console/accounts/{account}/sources/new", pages.route(sources.new, signed_in=True), methods=["GET"]),
            Route("/console/accounts/{account}/sources", pages.route(sources.add, signed_in=True), methods=["POST"]),
            Route(
                "/console/accounts/{account}/sources/{source}",
                pages.route(sources.show, signed_in=True),
                methods=["GET"],
            ),
            Route(
                "/console/accounts/{account}/sources/{source}",
                pages.route(sources.change, signed_in=True),
                methods=["POST"],
            ),
            Route(
                "/console/accounts/{account}/sources/{source}/test",
                pages.route(sources.test, signed_in=True),
                methods=["POST"],
            ),
            Route(
                "/console/accounts/{account}/sources/{source}/remove",
                pages.route(sources.remove, signed_in=True),
                methods=["POST"],
            ),
            Mount("/console/static", static, name="console-static"),
        ]


def console_routes(parts: ConsoleParts) -> tuple[list[BaseRoute], AmoCRMSignIn]:
    """The console's routes, and what the OAuth callback asks it."""
    console = Console(parts)
    return console.routes(), console.sign_in


async def _home(page: Page) -> Response:
    session = page.session
    if session.role == "operator":
        return page.redirect("/console/operator/accounts")
    if session.role == "account":
        return page.redirect(f"/console/accounts/{urllib.parse.quote(session.account)}")
    return page.redirect("/console/sign-in")


async def _language(page: Page) -> Response:
    form = page.request.state.form
    if form.get("lang") in LANGUAGES:
        page.session.lang = form["lang"]
    back = form.get("back", "")
    # Only a page of the console: never a redirect elsewhere.
    return page.redirect(
        back if back.startswith("/console/") and "//" not in back and "\\" not in back else "/console/"
    )
