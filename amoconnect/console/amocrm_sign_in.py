"""Signing an account's admin in through amoCRM: the OAuth install itself, or "sign in with amoCRM".

"Sign in with amoCRM" runs the authorisation again: the browser is sent to amoCRM's authorisation
page, ``https://www.amocrm.ru/oauth?client_id=...&state=...&mode=post_message`` (amoCRM's OAuth
"step by step" page, "getting the authorization code":
https://www.amocrm.ru/developers/content/oauth/step-by-step; Kommo's is ``https://www.kommo.com/oauth``),
with a random ``state`` kept in the session. amoCRM sends the browser back to the integration's
redirect URI (``/oauth/callback``) with ``code``, ``referer`` and that ``state``.

The callback (:mod:`amoconnect.server.oauth`) asks :meth:`AmoCRMSignIn.state_ok` before it installs: where
this browser started a flow, the ``state`` must come back exactly, once (a forged, missing or replayed
one is refused); a state-less install started from amoCRM's marketplace (no flow, no ``state``) goes
through. On success :meth:`AmoCRMSignIn.installed` signs the browser in as that account's admin and sends
it to the account's page; :meth:`AmoCRMSignIn.refused` shows a browser why a callback installed nothing
(the admin pressed "Deny", a bad ``state``, a code amoCRM refused...) and how to try again.
"""

from __future__ import annotations

import urllib.parse

from starlette.requests import Request
from starlette.responses import Response

from ..store.registry import AccountRecord
from .parts import ConsoleParts
from .session import new_token
from .web import Page, Pages

__all__ = ["AUTHORIZE_URLS", "AmoCRMSignIn"]

AUTHORIZE_URLS = {"amocrm.ru": "https://www.amocrm.ru/oauth", "kommo.com": "https://www.kommo.com/oauth"}
"""amoCRM's authorisation pages (``amocrm.com`` accounts are Kommo's)."""


class AmoCRMSignIn:
    """The start of "sign in with amoCRM" and the callback's two questions."""

    def __init__(self, parts: ConsoleParts, pages: Pages) -> None:
        self.parts, self.pages = parts, pages

    async def start(self, page: Page) -> Response:
        """POST: a fresh ``state`` into the session, the browser to amoCRM's authorisation page."""
        if not self.parts.can_authorize:
            return page.render("error.html", 404, message=page.t("sign_in.no_oauth"), detail="")
        domain = page.request.state.form.get("domain", "")
        base = self.parts.authorize_url or AUTHORIZE_URLS.get(domain, AUTHORIZE_URLS["amocrm.ru"])
        page.session.state = new_token()
        query = urllib.parse.urlencode(
            {"client_id": self.parts.client_id, "state": page.session.state, "mode": "post_message"}
        )
        return page.redirect(f"{base}?{query}")

    def state_ok(self, request: Request, state: str) -> bool:
        """Whether the callback's ``state`` is the one this browser's flow expects (none expected: none given)."""
        session = self.parts.codec.read(request)
        expected = session.state if session is not None else ""
        if not expected:
            return not state
        return bool(state) and state == expected

    def installed(self, request: Request, account: AccountRecord) -> Response:
        """After an install: the browser signed in as the account's admin, sent to its page."""
        before = self.parts.codec.read(request) or self.parts.codec.fresh()
        page = Page(self.pages, request, self.parts.codec.signed_in("account", account.name, before))
        return page.redirect(f"/console/accounts/{urllib.parse.quote(account.name)}")

    def refused(self, request: Request, kind: str, status: int, detail: str, domain: str) -> Response:
        """The page of a callback that installed nothing: why (``kind``), what to do, the technical ``detail``."""
        page = Page(self.pages, request, self.parts.codec.read(request) or self.parts.codec.fresh(), domain=domain)
        return page.render("install_refused.html", status, kind=kind, detail=detail, amocrm=self.parts.can_authorize)
