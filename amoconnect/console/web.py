"""What every console page shares: templates, the security headers, sessions, CSRF and form bodies.

Every page is rendered from a Jinja2 template with autoescaping on, and answered with a strict
Content-Security-Policy (only the console's own script and stylesheet; no inline script or style;
no framing), ``nosniff``, no referrer outside the origin and no caching. Every POST carries the
session's CSRF token in a ``csrf`` field; one without it (or with another) is refused with 403 and
changes nothing.
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import jinja2
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from ..signing import same_secret
from .i18n import LANGUAGES, Translator, choose
from .session import Session, SessionCodec

__all__ = ["AUTHORIZE_ORIGINS", "CSP", "MAX_FORM_BYTES", "Forbidden", "Page", "Pages", "csp", "form_of", "origin_of"]

AUTHORIZE_ORIGINS = ("https://www.amocrm.ru", "https://www.kommo.com")
"""Where "sign in with amoCRM" sends a form: a form's redirect must be allowed by ``form-action`` too."""


def csp(form_origins: Sequence[str] = ()) -> str:
    """The console's Content-Security-Policy; ``form_origins``: origins beyond amoCRM's that a form's
    redirect may go to (a configured ``[console] authorize_url``)."""
    targets = " ".join(dict.fromkeys(("'self'", *AUTHORIZE_ORIGINS, *form_origins)))
    return (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        f"form-action {targets}; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
    )


CSP = csp()
"""The console's policy with no configured authorisation page."""
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
}
MAX_FORM_BYTES = 64 * 1024
"""Largest form body the console reads."""


class Forbidden(Exception):
    """The request may not do this (a missing or wrong CSRF token, another account's page): 403."""


class _BadForm(Exception):
    pass


async def form_of(request: Request) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body (at most :data:`MAX_FORM_BYTES`), last value of each name."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_FORM_BYTES:
            raise _BadForm(f"form over {MAX_FORM_BYTES} bytes")
        chunks.append(chunk)
    try:
        text = b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError:
        raise _BadForm("form is not UTF-8") from None
    return dict(urllib.parse.parse_qsl(text, keep_blank_values=True, max_num_fields=200))


class Page:
    """One request's view of the console: its session, language and how to answer."""

    def __init__(self, pages: Pages, request: Request, session: Session, *, domain: str = "") -> None:
        self.pages, self.request, self.session = pages, request, session
        self.domain(domain)

    def domain(self, domain: str) -> None:
        """Choose the language again, knowing the account's ``domain``."""
        self.lang = choose(self.session.lang, domain, self.request.headers.get("accept-language", ""))
        self.t = Translator(self.lang)

    def render(self, template: str, status: int = 200, **context: Any) -> Response:
        body = self.pages.env.get_template(template).render(
            t=self.t,
            lang=self.lang,
            languages=LANGUAGES,
            session=self.session,
            csrf=self.session.csrf,
            path=self.request.url.path,
            **context,
        )
        return self.answer(Response(body, status_code=status, media_type="text/html; charset=utf-8"))

    def redirect(self, to: str) -> Response:
        return self.answer(RedirectResponse(to, status_code=303))

    def answer(self, response: Response) -> Response:
        """``response`` with the security headers, and the session's cookie when the session is not the one
        the request brought: a request that leaves the session as it was (the sandbox's poll) never
        sets it, so one that began before a sign-in cannot put back the session from before it."""
        response.headers.update(self.pages.headers)
        if self.pages.codec.read(self.request) != self.session:
            self.pages.codec.write(self.request, response, self.session)
        return response


Handler = Callable[[Page], Awaitable[Response]]


class Pages:
    """The template environment and the wrapping every console route goes through."""

    def __init__(self, codec: SessionCodec, *, form_origins: Sequence[str] = ()) -> None:
        self.codec = codec
        self.headers = {**HEADERS, "Content-Security-Policy": csp(form_origins)}
        """The security headers of every page (:data:`HEADERS`, the policy with ``form_origins``)."""
        self.env = jinja2.Environment(
            loader=jinja2.PackageLoader(__package__, "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            auto_reload=False,
        )
        self.env.filters["when"] = _when

    def route(self, handler: Handler, *, signed_in: bool = False) -> Callable[[Request], Awaitable[Response]]:
        """A Starlette endpoint around ``handler``: the session read (a new visitor gets one), POSTs
        checked for the CSRF token, :class:`Forbidden` answered 403; ``signed_in``: visitors are sent
        to the sign-in page."""

        async def endpoint(request: Request) -> Response:
            session = self.codec.read(request) or self.codec.fresh()
            page = Page(self, request, session)
            try:
                if request.method == "POST":
                    form = await form_of(request)
                    if not same_secret(form.get("csrf", ""), session.csrf):
                        raise Forbidden("the form's CSRF token is missing or not this session's")
                    request.state.form = form
                if signed_in and not session.role:
                    return page.redirect("/console/sign-in")
                return await handler(page)
            except Forbidden as exc:
                return page.render("error.html", 403, message=page.t("error.forbidden"), detail=str(exc))
            except _BadForm as exc:
                return page.render("error.html", 400, message=page.t("error.bad_form"), detail=str(exc))

        return endpoint


def origin_of(url: str) -> tuple[str, ...]:
    """The origin of ``url`` (``scheme://host[:port]``) as a one-item tuple; empty for none."""
    parts = urllib.parse.urlsplit(url)
    return (f"{parts.scheme}://{parts.netloc}",) if parts.scheme and parts.netloc else ()


def _when(moment: float | None) -> str:
    """A Unix time as ``YYYY-MM-DD HH:MM`` UTC ("—" for none)."""
    if not moment:
        return "—"
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(moment))
