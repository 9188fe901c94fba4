"""An in-process fake of the amoCRM REST API pieces amoconnect uses (spec §10).

``FakeAmoCRM().app`` is an ASGI (Starlette) app; drive it through
``httpx.AsyncClient(transport=httpx.ASGITransport(app=fake.app), base_url=fake.base_url)``.
It behaves like amoCRM where amoconnect depends on it: the authorisation page an account's admin
allows the integration on (``GET /oauth?client_id=&state=&mode=``; "allow" sends the browser to the
redirect URI with ``code``, ``referer``, ``state``, ``platform`` and ``client_id``, "deny" with
``error=access_denied``; an unknown client_id, a redirect_uri other than the registered one or a
wrong mode is refused), bearer tokens (401 problem+json for a
missing, unknown or expired one), the OAuth token endpoint with rotating refresh tokens,
HAL answers (``_embedded``, ``_links``, ``_page``), 204 for empty lists, 400 with
``validation-errors``, a per-token rate limit answering 429 (and, optionally, the IP ban: 403),
and fault injection. All state is plain attributes, for tests to read and set.
"""

from __future__ import annotations

import html
import math
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode

import anyio
import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..amocrm import Tokens
from ..ratelimit import RateLimiter
from ..signing import matching_secret, same_secret

__all__ = ["FakeAmoCRM", "FakeRequest", "ManualClock"]

_EXTERNAL_ID = re.compile(r"[\x20-\x7e]{1,40}")
_WABA_CATEGORIES = ("UTILITY", "AUTHENTICATION", "MARKETING")
_REVIEW_STATUSES = ("approved", "rejected", "paused", "review")
_HAL = "application/hal+json"
_PROBLEM = "application/problem+json"
_OAUTH_PROBLEM = "https://developers.amocrm.ru/v3/errors/OAuthProblemJson"

Handler = Callable[[Request], Awaitable[Response]]

_PAGE_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action *; base-uri 'none'"
_ALLOW_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Allow access · amoCRM (fake)</title>
<link rel="icon" href="data:,">
<style>body{{font:16px/1.5 system-ui,sans-serif;background:#f2f4f7;margin:0}}
main{{max-width:30rem;margin:4rem auto;background:#fff;border:1px solid #d0d5dd;border-radius:8px;padding:1.5rem 2rem}}
button{{font:inherit;padding:.4rem 1.2rem;border-radius:4px;border:1px solid #1570ef;cursor:pointer}}
.allow{{background:#1570ef;color:#fff}}.deny{{background:#fff;color:#1570ef}}.meta{{color:#667085;font-size:.9em}}</style>
</head><body><main>
<p class="meta">amoCRM (the sandbox's fake)</p>
<h1>Allow access</h1>
<p>The integration <strong>{integration}</strong> asks for access to the account <strong>{account}</strong>:
its data, and sending and receiving chat messages.</p>
<form method="post" action="/oauth">{fields}
<button class="allow" type="submit" name="decision" value="allow">Allow</button>
<button class="deny" type="submit" name="decision" value="deny">Deny</button>
</form></main></body></html>
"""


class ManualClock:
    """A clock that moves only when told to or when someone sleeps on it.

    Share one between the fake (``clock=``) and a client's :class:`~amoconnect.ratelimit.RateLimiter`
    (``clock=clock, sleep=clock.sleep``) to run seconds of rate-limited traffic instantly. Each
    sleep moves time forward by its own length, which is exact for one sleeper at a time.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move time forward."""
        self.now += max(seconds, 0.0)

    async def sleep(self, seconds: float) -> None:
        """Move time forward by ``seconds`` and let other tasks run."""
        self.advance(seconds)
        await anyio.lowlevel.checkpoint()


class FakeRequest(msgspec.Struct, kw_only=True):
    """One request the fake received and what it answered."""

    method: str
    path: str
    query: str
    token: str | None
    status: int = 0
    json: Any = None
    at: float = 0.0


class _Fault(msgspec.Struct, kw_only=True):
    count: int
    status: int
    path: str | None
    body: bytes | None
    headers: dict[str, str]


def _json(data: Any, status: int = 200, media_type: str = _HAL) -> Response:
    return Response(msgspec.json.encode(data), status_code=status, media_type=media_type)


def _problem(status: int, title: str, detail: str, **extra: Any) -> Response:
    body = {"title": title, "type": f"https://httpstatus.es/{status}", "status": status, "detail": detail, **extra}
    return _json(body, status, _PROBLEM)


def _invalid(errors: dict[int, list[dict[str, str]]]) -> Response:
    return _problem(
        400,
        "Bad Request",
        "Request validation failed",
        **{"validation-errors": [{"request_id": str(i), "errors": errs} for i, errs in sorted(errors.items())]},
    )


def _err(path: str, detail: str, code: str = "InvalidValue") -> dict[str, str]:
    return {"code": code, "path": path, "detail": detail}


class FakeAmoCRM:
    """A fake amoCRM account with one integration (``client_id``/``client_secret``/``redirect_uri``).

    ``rate_limit`` requests per ``rate_window`` seconds per token (``None`` turns the limit off);
    ``ban_after`` consecutive 429s switch on the IP ban (every request then answers 403 until
    :meth:`unban`). ``clock`` measures the rate limit, ``wall_clock`` token expiry (unix seconds).
    """

    def __init__(
        self,
        *,
        subdomain: str = "example",
        domain: str = "amocrm.ru",
        client_id: str = "fake-client-id",
        client_secret: str = "fake-client-secret",
        redirect_uri: str = "https://connector.example/oauth",
        integration_name: str = "amoconnect",
        access_token_ttl: int = 86400,
        rate_limit: float | None = 7.0,
        rate_window: float = 1.0,
        ban_after: int | None = None,
        max_sources: int | None = 50,
        max_page_size: int = 250,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.subdomain = subdomain
        self.base_url = f"https://{subdomain}.{domain}"
        self.client_id = client_id
        self.client_secret = client_secret
        self.redirect_uri = redirect_uri
        self.integration_name = integration_name
        self.access_token_ttl = access_token_ttl
        self.ban_after = ban_after
        self.max_sources = max_sources
        self.max_page_size = max_page_size
        self.clock = clock
        self.wall_clock = wall_clock
        self.account = {"id": 30000001, "name": "Fake account", "subdomain": subdomain, "current_user_id": 1}
        self.amojo_id = "5b1e5c1e-0000-4000-8000-00000000a001"
        self.pipeline_id = 7000001
        self.access_tokens: dict[str, float | None] = {}
        """Access token → expiry (unix seconds; ``None`` = never, a long-lived token)."""
        self.refresh_tokens: set[str] = set()
        self.codes: set[str] = set()
        self.grants: list[str] = []
        """``grant_type`` of every successful token request, in order."""
        self.users: list[dict[str, Any]] = []
        self.sources: dict[int, dict[str, Any]] = {}
        self.contacts: dict[int, dict[str, Any]] = {}
        self.chat_links: dict[str, dict[str, Any]] = {}
        """amoCRM chat id → link."""
        self.templates: dict[int, dict[str, Any]] = {}
        self.webhooks: dict[str, dict[str, Any]] = {}
        """Destination → subscription."""
        self.requests: list[FakeRequest] = []
        self.rate_limited = 0
        """How many requests were answered 429."""
        self.banned = False
        self._consecutive_429 = 0
        self._faults: list[_Fault] = []
        self._ids = 100
        self.set_rate_limit(rate_limit, rate_window)
        self.app = Starlette(routes=self._routes())

    # -- test controls -------------------------------------------------------------------
    def set_rate_limit(self, rate: float | None, window: float = 1.0) -> None:
        """Allow ``rate`` requests per ``window`` seconds per token (bursts of ``rate``); ``None``: no limit."""
        self.rate_limit = rate
        self.rate_window = window
        self._limiter = (
            None if rate is None else RateLimiter(rate, window, burst=max(1, math.floor(rate)), clock=self.clock)
        )

    def fail_next(
        self,
        count: int,
        status: int = 500,
        *,
        path: str | None = None,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Answer the next ``count`` requests (whose path starts with ``path``, if given) with ``status``."""
        self._faults.append(_Fault(count=count, status=status, path=path, body=body, headers=dict(headers or {})))

    def unban(self) -> None:
        """Lift the IP ban."""
        self.banned = False
        self._consecutive_429 = 0

    def issue_code(self) -> str:
        """An authorisation code, as amoCRM sends to the redirect URI when a user installs the integration."""
        code = "code-" + secrets.token_urlsafe(12)
        self.codes.add(code)
        return code

    def issue_tokens(self, *, ttl: int | None = None) -> Tokens:
        """An OAuth token pair (``ttl`` seconds; negative = already expired), without a request."""
        return self._new_tokens(self.access_token_ttl if ttl is None else ttl)

    def add_long_lived_token(self, token: str | None = None) -> str:
        """A long-lived token that never expires."""
        token = token or "long-" + secrets.token_urlsafe(16)
        self.access_tokens[token] = None
        return token

    def expire_access_tokens(self) -> None:
        """Make every OAuth access token expired (long-lived ones too)."""
        past = self.wall_clock() - 1
        for token in self.access_tokens:
            self.access_tokens[token] = past

    def add_user(self, name: str, email: str | None = None, *, amojo_id: str | None = None) -> dict[str, Any]:
        """Add a user of the account; each gets an amojo id unless given one."""
        uid = self._next_id()
        user = {
            "id": uid,
            "name": name,
            "email": email or f"user{uid}@example.test",
            "lang": "ru",
            "amojo_id": amojo_id or f"a0a0a0a0-0000-4000-8000-{uid:012d}",
        }
        self.users.append(user)
        return user

    def add_contact(self, name: str, *, phones: Sequence[str] = (), emails: Sequence[str] = ()) -> int:
        """Add a contact with phones and e-mails in ``custom_fields_values``; returns its id."""
        fields = []
        for code, field_id, field_name, values in (
            ("PHONE", 1001, "Телефон", phones),
            ("EMAIL", 1003, "Email", emails),
        ):
            if values:
                fields.append(
                    {
                        "field_id": field_id,
                        "field_name": field_name,
                        "field_code": code,
                        "field_type": "multitext",
                        "values": [{"value": v, "enum_id": field_id * 10, "enum_code": "WORK"} for v in values],
                    }
                )
        cid = self._next_id()
        self.contacts[cid] = {"id": cid, "name": name, "custom_fields_values": fields or None}
        return cid

    def requests_to(self, path: str, method: str | None = None) -> list[FakeRequest]:
        """The requests received on ``path`` (and with ``method``, if given)."""
        return [r for r in self.requests if r.path == path and (method is None or r.method == method)]

    # -- plumbing ------------------------------------------------------------------------
    def _next_id(self) -> int:
        self._ids += 1
        return self._ids

    def _new_tokens(self, ttl: int) -> Tokens:
        access = "access-" + secrets.token_urlsafe(16)
        refresh = "refresh-" + secrets.token_urlsafe(16)
        expires_at = self.wall_clock() + ttl
        self.access_tokens[access] = expires_at
        self.refresh_tokens.add(refresh)
        return Tokens(access_token=access, refresh_token=refresh, expires_at=int(expires_at))

    def _take_fault(self, path: str) -> _Fault | None:
        for fault in self._faults:
            if fault.count > 0 and (fault.path is None or path.startswith(fault.path)):
                fault.count -= 1
                return fault
        self._faults = [f for f in self._faults if f.count > 0]
        return None

    def _routes(self) -> list[Route]:
        api: list[tuple[str, str, Handler]] = [
            ("/api/v4/account", "GET", self._account),
            ("/api/v4/users", "GET", self._users),
            ("/api/v4/sources", "GET", self._list_sources),
            ("/api/v4/sources", "POST", self._create_sources),
            ("/api/v4/sources", "PATCH", self._update_sources),
            ("/api/v4/sources", "DELETE", self._delete_sources),
            ("/api/v4/contacts", "GET", self._find_contacts),
            ("/api/v4/contacts/chats", "POST", self._link_chats),
            ("/api/v4/chats/templates", "GET", self._list_templates),
            ("/api/v4/chats/templates", "POST", self._create_templates),
            ("/api/v4/chats/templates", "PATCH", self._update_templates),
            ("/api/v4/chats/templates", "DELETE", self._delete_templates),
            ("/api/v4/chats/templates/{template_id:int}/review", "POST", self._send_to_review),
            ("/api/v4/chats/templates/{template_id:int}/review/{review_id:int}", "POST", self._set_review),
            ("/api/v4/webhooks", "POST", self._subscribe_webhook),
        ]
        routes = [
            Route("/oauth2/access_token", self._guard(self._token, auth=False), methods=["POST"]),
            Route("/oauth", self._authorize, methods=["GET"]),
            Route("/oauth", self._decide, methods=["POST"]),
        ]
        by_path: dict[str, dict[str, Handler]] = {}
        for path, method, handler in api:
            by_path.setdefault(path, {})[method] = handler
        for path, handlers in by_path.items():
            routes.append(Route(path, self._guard(self._dispatch(handlers), auth=True), methods=list(handlers)))
        return routes

    @staticmethod
    def _dispatch(handlers: dict[str, Handler]) -> Handler:
        async def endpoint(request: Request) -> Response:
            return await handlers[request.method](request)

        return endpoint

    def _guard(self, handler: Handler, *, auth: bool) -> Handler:
        async def endpoint(request: Request) -> Response:
            header = request.headers.get("authorization", "")
            token = header[7:].strip() if header.lower().startswith("bearer ") else None
            try:
                sent = await _body(request)
            except _BadJSON:
                sent = None
            record = FakeRequest(
                method=request.method,
                path=request.url.path,
                query=request.url.query,
                token=token,
                json=sent,
                at=self.clock(),
            )
            self.requests.append(record)
            response = await self._answer(request, handler, token, auth=auth)
            record.status = response.status_code
            if response.status_code == 429:
                self.rate_limited += 1
                self._consecutive_429 += 1
                if self.ban_after is not None and self._consecutive_429 >= self.ban_after:
                    self.banned = True
            else:
                self._consecutive_429 = 0
            return response

        return endpoint

    async def _answer(self, request: Request, handler: Handler, token: str | None, *, auth: bool) -> Response:
        if self.banned:
            return _problem(403, "Forbidden", "Access from this IP address is blocked after repeated excess")
        fault = self._take_fault(request.url.path)
        if fault is not None:
            if fault.body is not None:
                return Response(fault.body, status_code=fault.status, headers=fault.headers)
            title = "Too Many Requests" if fault.status == 429 else "Injected fault"
            response = _problem(fault.status, title, f"fault injected by the test: HTTP {fault.status}")
            response.headers.update(fault.headers)
            return response
        if auth:
            if token is None:
                return _problem(401, "Unauthorized", "Authorization header with a Bearer token is required")
            token = matching_secret(token, self.access_tokens)
            if token is None:
                return _problem(401, "Unauthorized", "Invalid access token")
            expires_at = self.access_tokens[token]
            if expires_at is not None and expires_at <= self.wall_clock():
                return _problem(401, "Unauthorized", "Access token has expired")
            if self._limiter is not None and not self._limiter.try_acquire(token):
                return _problem(429, "Too Many Requests", f"More than {self.rate_limit:g} requests per second")
        try:
            return await handler(request)
        except _BadJSON:
            return _problem(400, "Bad Request", "Request body is not valid JSON")

    # -- OAuth ---------------------------------------------------------------------------
    async def _authorize(self, request: Request) -> Response:
        """amoCRM's authorisation page (``GET /oauth?client_id=&state=&mode=``): the account's admin
        is asked to allow the integration; the page's form posts the answer back (:meth:`_decide`)."""
        refused = self._authorize_refusal(request.query_params)
        if refused is not None:
            return refused
        query = request.query_params
        fields = "".join(
            f'<input type="hidden" name="{name}" value="{html.escape(query[name])}">'
            for name in ("client_id", "state", "mode", "redirect_uri")
            if name in query
        )
        page = _ALLOW_PAGE.format(
            integration=html.escape(self.integration_name),
            account=html.escape(self.base_url.removeprefix("https://")),
            fields=fields,
        )
        return Response(page, media_type="text/html; charset=utf-8", headers={"Content-Security-Policy": _PAGE_CSP})

    async def _decide(self, request: Request) -> Response:
        """The admin's answer on the authorisation page: "allow" sends the browser to the
        integration's redirect URI with a fresh ``code``, ``referer`` (the account's host), the
        ``state`` it was given, ``platform`` (1: amocrm.ru, 2: amocrm.com and Kommo) and
        ``client_id``; "deny" sends it there with ``error=access_denied`` (RFC 6749, 4.1.2.1)."""
        form = dict(parse_qsl((await request.body()).decode("utf-8", "replace"), keep_blank_values=True))
        refused = self._authorize_refusal(form)
        if refused is not None:
            return refused
        decision = form.get("decision")
        if decision == "allow":
            return Response(status_code=302, headers={"Location": self.authorize(form.get("state"))})
        if decision == "deny":
            params = {"error": "access_denied", **({"state": form["state"]} if "state" in form else {})}
            params["client_id"] = self.client_id
            return Response(status_code=302, headers={"Location": f"{self.redirect_uri}?{urlencode(params)}"})
        return _problem(400, "Bad Request", "decision must be 'allow' or 'deny'")

    def _authorize_refusal(self, query: Mapping[str, str]) -> Response | None:
        """The error page for a request amoCRM's authorisation page refuses, or None."""
        if not query.get("client_id"):
            return _problem(400, "Bad Request", "client_id is required")
        if query["client_id"] != self.client_id:
            return _problem(404, "Not Found", "Integration not found: unknown client_id")
        if "redirect_uri" in query and query["redirect_uri"] != self.redirect_uri:
            # never redirect to a URI the integration did not register (RFC 6749, 4.1.2.1)
            return _problem(400, "Bad Request", "redirect_uri does not match the integration's one")
        if "mode" in query and query["mode"] not in ("popup", "post_message"):
            return _problem(400, "Bad Request", "mode must be 'popup' or 'post_message'")
        return None

    def authorize(self, state: str | None = None) -> str:
        """Where "allow" on the authorisation page sends the browser: the redirect URI with a fresh
        code, the account's host, ``state`` (when the flow had one), the platform and the client id."""
        params = {"code": self.issue_code(), "referer": self.base_url.removeprefix("https://")}
        if state is not None:
            params["state"] = state
        params["platform"] = "1" if self.base_url.endswith(".amocrm.ru") else "2"
        params["client_id"] = self.client_id
        return f"{self.redirect_uri}?{urlencode(params)}"

    async def _token(self, request: Request) -> Response:
        body = await _body(request)
        if not isinstance(body, dict):
            body = dict(parse_qsl((await request.body()).decode("utf-8", "replace")))

        def oauth_error(hint: str, title: str = "Bad Request", status: int = 400) -> Response:
            detail = "The request is missing parameters or they are invalid"
            return _json(
                {"hint": hint, "title": title, "type": _OAUTH_PROBLEM, "status": status, "detail": detail},
                status,
                _PROBLEM,
            )

        if body.get("client_id") != self.client_id or not same_secret(body.get("client_secret"), self.client_secret):
            return oauth_error("Client authentication failed", "Invalid client")
        if body.get("redirect_uri") != self.redirect_uri:
            return oauth_error("redirect_uri does not match the integration's one")
        grant = body.get("grant_type")
        if grant == "authorization_code":
            code = matching_secret(body.get("code"), self.codes)
            if code is None:
                return oauth_error("Authorization code has expired or been used")
            self.codes.discard(code)
        elif grant == "refresh_token":
            # A refresh token works once: the answer's pair replaces it at once, with no grace period,
            # and a used (or revoked) one is answered 401 "Token has been revoked", as amoCRM's
            # maintainers describe it in https://github.com/amocrm/amocrm-api-php/issues/123 (the
            # answer quoted there: status 401, hint "Token has been revoked"). The access tokens
            # issued before keep working until they expire.
            refresh = matching_secret(body.get("refresh_token"), self.refresh_tokens)
            if refresh is None:
                return oauth_error("Token has been revoked", status=401)
            self.refresh_tokens.discard(refresh)
        else:
            return oauth_error(f"Unsupported grant type {grant!r}")
        self.grants.append(grant)
        tokens = self._new_tokens(self.access_token_ttl)
        return _json(
            {
                "token_type": "Bearer",
                "expires_in": self.access_token_ttl,
                "access_token": tokens.access_token,
                "refresh_token": tokens.refresh_token,
                "server_time": int(self.wall_clock()),
            },
            media_type="application/json",
        )

    # -- account and users ---------------------------------------------------------------
    def _links(self, request: Request, page: int, more: bool) -> dict[str, Any]:
        base = str(request.url.remove_query_params("page"))
        sep = "&" if "?" in base else "?"
        links: dict[str, Any] = {"self": {"href": f"{base}{sep}page={page}"}}
        if more:
            links["next"] = {"href": f"{base}{sep}page={page + 1}"}
        if page > 1:
            links["prev"] = {"href": f"{base}{sep}page={page - 1}"}
        return links

    def _page(self, request: Request, items: list[dict[str, Any]], key: str, default_limit: int = 50) -> Response:
        try:
            page = max(int(request.query_params.get("page", "1")), 1)
            limit = int(request.query_params.get("limit", str(default_limit)))
        except ValueError:
            return _problem(400, "Bad Request", "page and limit must be integers")
        limit = min(max(limit, 1), self.max_page_size)
        chunk = items[(page - 1) * limit : page * limit]
        if not chunk:
            return Response(status_code=204)
        more = page * limit < len(items)
        return _json(
            {
                "_page": page,
                "_links": self._links(request, page, more),
                "_embedded": {key: chunk},
            }
        )

    async def _account(self, request: Request) -> Response:
        withs = request.query_params.get("with", "").split(",")
        body = {**self.account, "_links": {"self": {"href": f"{self.base_url}/api/v4/account"}}}
        if "amojo_id" in withs:
            body["amojo_id"] = self.amojo_id
        return _json(body)

    async def _users(self, request: Request) -> Response:
        show_amojo = "amojo_id" in request.query_params.get("with", "").split(",")
        users = [u if show_amojo else {k: v for k, v in u.items() if k != "amojo_id"} for u in self.users]
        return self._page(request, users, "users")

    # -- sources -------------------------------------------------------------------------
    def _check_source(self, item: Any, partial: bool, errors: list[dict[str, str]]) -> None:
        if not isinstance(item, dict):
            errors.append(_err("", "a source must be an object"))
            return
        if ("name" in item or not partial) and (not isinstance(item.get("name"), str) or not item["name"].strip()):
            errors.append(_err("name", "This value should not be blank.", "NotBlank"))
        if "external_id" in item or not partial:
            ext = item.get("external_id")
            if not isinstance(ext, str) or not _EXTERNAL_ID.fullmatch(ext):
                errors.append(_err("external_id", "external_id must be 1-40 printable ASCII characters"))
        if "default" in item and item["default"] is not None and not isinstance(item["default"], bool):
            errors.append(_err("default", "This value should be of type bool."))
        if "pipeline_id" in item and item["pipeline_id"] is not None and not isinstance(item["pipeline_id"], int):
            errors.append(_err("pipeline_id", "This value should be of type int."))
        services = item.get("services")
        if services is None:
            return
        if not isinstance(services, list):
            errors.append(_err("services", "This value should be of type array."))
            return
        for n, service in enumerate(services):
            if not isinstance(service, dict) or service.get("type") != "whatsapp":
                errors.append(
                    _err(f"services.{n}.type", "The value you selected is not a valid choice.", "NotSupportedChoice")
                )
                continue
            params = service.get("params") or {}
            for flag in ("waba", "is_supports_list_message"):
                if not isinstance(params, dict) or (flag in params and not isinstance(params[flag], bool)):
                    errors.append(_err(f"services.{n}.params.{flag}", "This value should be of type bool."))
            for m, page in enumerate(service.get("pages") or []):
                if not isinstance(page, dict) or not all(isinstance(page.get(k), str) for k in ("id", "name", "link")):
                    errors.append(_err(f"services.{n}.pages.{m}", "a page needs string id, name and link"))

    def _source_batch(self, body: Any, *, update: bool) -> Response | None:
        if not isinstance(body, list) or not body:
            return _problem(400, "Bad Request", "The request body must be a non-empty array of sources")
        if len(body) > 50:
            return _problem(400, "Bad Request", "No more than 50 sources may be passed in one request")
        errors: dict[int, list[dict[str, str]]] = {}
        taken = {s["external_id"]: sid for sid, s in self.sources.items()}
        in_batch: set[str] = set()
        defaults = 0
        for i, item in enumerate(body):
            errs: list[dict[str, str]] = []
            self._check_source(item, update, errs)
            if isinstance(item, dict):
                sid = item.get("id")
                if update and sid not in self.sources:
                    errs.append(_err("id", f"source {sid!r} not found", "NotFound"))
                ext = item.get("external_id")
                if isinstance(ext, str):
                    if (ext in taken and taken[ext] != sid) or ext in in_batch:
                        errs.append(
                            _err("external_id", f"a source with external_id {ext!r} already exists", "NotUnique")
                        )
                    in_batch.add(ext)
                if item.get("default") is True:
                    defaults += 1
                    if defaults > 1:
                        errs.append(_err("default", "only one source may be the default one"))
            if errs:
                errors[i] = errs
        if errors:
            return _invalid(errors)
        if not update and self.max_sources is not None and len(self.sources) + len(body) > self.max_sources:
            return _problem(400, "Bad Request", f"An integration may have no more than {self.max_sources} sources")
        return None

    def _store_source(self, item: dict[str, Any], sid: int) -> dict[str, Any]:
        old = self.sources.get(sid, {"id": sid, "pipeline_id": self.pipeline_id, "default": False, "services": []})
        fields = ("name", "external_id", "default", "pipeline_id", "origin_code", "services")
        source = {**old, **{k: item[k] for k in fields if k in item and item[k] is not None}}
        if source.get("default"):
            for other in self.sources.values():
                other["default"] = False
        source["_links"] = {"self": {"href": f"{self.base_url}/api/v4/sources/{sid}"}}
        self.sources[sid] = source
        return source

    async def _list_sources(self, request: Request) -> Response:
        return self._page(request, list(self.sources.values()), "sources")

    async def _create_sources(self, request: Request) -> Response:
        body = await _body(request)
        if (problem := self._source_batch(body, update=False)) is not None:
            return problem
        created = [self._store_source(item, self._next_id()) for item in body]
        return _json({"_total_items": len(created), "_embedded": {"sources": created}})

    async def _update_sources(self, request: Request) -> Response:
        body = await _body(request)
        if (problem := self._source_batch(body, update=True)) is not None:
            return problem
        updated = [self._store_source(item, item["id"]) for item in body]
        return _json({"_total_items": len(updated), "_embedded": {"sources": updated}})

    async def _delete_sources(self, request: Request) -> Response:
        body = await _body(request)
        if not isinstance(body, list) or not all(isinstance(i, dict) and isinstance(i.get("id"), int) for i in body):
            return _problem(400, "Bad Request", "The request body must be an array of {id}")
        if len(body) > 50:
            return _problem(400, "Bad Request", "No more than 50 sources may be passed in one request")
        missing = [i["id"] for i in body if i["id"] not in self.sources]
        if missing:
            return _problem(404, "Not Found", f"sources not found: {missing}")
        for item in body:
            del self.sources[item["id"]]
        return Response(status_code=204)

    # -- contacts ------------------------------------------------------------------------
    async def _find_contacts(self, request: Request) -> Response:
        query = request.query_params.get("query", "").strip().lower()
        digits = re.sub(r"\D", "", query)

        def matches(contact: dict[str, Any]) -> bool:
            if not query:
                return True
            if query in contact["name"].lower():
                return True
            for field in contact.get("custom_fields_values") or ():
                for value in field["values"]:
                    text = str(value["value"]).lower()
                    if query in text:
                        return True
                    if field["field_code"] == "PHONE" and len(digits) >= 5 and digits in re.sub(r"\D", "", text):
                        return True
            return False

        found = [c for c in self.contacts.values() if matches(c)]
        return self._page(request, found, "contacts")

    async def _link_chats(self, request: Request) -> Response:
        body = await _body(request)
        if not isinstance(body, list) or not body:
            return _problem(400, "Bad Request", "The request body must be a non-empty array of {contact_id, chat_id}")
        errors: dict[int, list[dict[str, str]]] = {}
        for i, item in enumerate(body):
            errs = []
            if not isinstance(item, dict) or item.get("contact_id") not in self.contacts:
                errs.append(_err("contact_id", "contact not found", "NotFound"))
            if not isinstance(item, dict) or not isinstance(item.get("chat_id"), str) or not item["chat_id"]:
                errs.append(_err("chat_id", "This value should not be blank.", "NotBlank"))
            if errs:
                errors[i] = errs
        if errors:
            return _invalid(errors)
        linked = []
        for i, item in enumerate(body):
            link = {"chat_id": item["chat_id"], "contact_id": item["contact_id"], "id": self._next_id()}
            self.chat_links[item["chat_id"]] = link
            linked.append({**link, "request_id": str(i)})
        return _json({"_total_items": len(linked), "_embedded": {"chats": linked}}, media_type="application/json")

    # -- chat templates ------------------------------------------------------------------
    def _check_template(self, item: Any, update: bool) -> list[dict[str, str]]:
        if not isinstance(item, dict):
            return [_err("", "a template must be an object")]
        errs = []
        tid: Any = item.get("id")
        if update and tid not in self.templates:
            errs.append(_err("id", f"template {tid!r} not found", "NotFound"))
        merged = {**self.templates.get(tid, {}), **item} if update else item
        for field in ("name", "content"):
            if not isinstance(merged.get(field), str) or not merged[field].strip():
                errs.append(_err(field, "This value should not be blank.", "NotBlank"))
        kind = merged.get("type") or "amocrm"
        if kind not in ("amocrm", "waba"):
            errs.append(_err("type", "The value you selected is not a valid choice.", "NotSupportedChoice"))
        if kind == "waba":
            if merged.get("waba_category") not in _WABA_CATEGORIES:
                errs.append(
                    _err("waba_category", f"must be one of {', '.join(_WABA_CATEGORIES)}", "NotSupportedChoice")
                )
            if not isinstance(merged.get("waba_language"), str) or not merged["waba_language"]:
                errs.append(_err("waba_language", "This value should not be blank.", "NotBlank"))
        for n, button in enumerate(merged.get("buttons") or []):
            if not isinstance(button, dict) or button.get("type") not in ("inline", "url") or not button.get("text"):
                errs.append(_err(f"buttons.{n}", "a button needs type inline or url and a text"))
            elif button["type"] == "url" and not button.get("url"):
                errs.append(_err(f"buttons.{n}.url", "a url button needs a url", "NotBlank"))
        return errs

    def _template_batch(self, body: Any, *, update: bool) -> Response | None:
        if not isinstance(body, list) or not body:
            return _problem(400, "Bad Request", "The request body must be a non-empty array of templates")
        errors = {i: errs for i, item in enumerate(body) if (errs := self._check_template(item, update))}
        return _invalid(errors) if errors else None

    def _store_template(self, item: dict[str, Any], tid: int) -> dict[str, Any]:
        now = int(self.wall_clock())
        old = self.templates.get(
            tid, {"id": tid, "account_id": self.account["id"], "type": "amocrm", "created_at": now}
        )
        keep = ("id", "account_id", "created_at", "reviews")
        template = {**old, **{k: v for k, v in item.items() if k not in keep and v is not None}, "updated_at": now}
        template.setdefault("is_editable", True)
        template.setdefault("reviews", [])
        self.templates[tid] = template
        return template

    @staticmethod
    def _shown(template: dict[str, Any], with_reviews: bool) -> dict[str, Any]:
        return template if with_reviews else {k: v for k, v in template.items() if k != "reviews"}

    async def _list_templates(self, request: Request) -> Response:
        with_reviews = "reviews" in request.query_params.get("with", "").split(",")
        wanted = set(
            request.query_params.getlist("filter[external_id][]") + request.query_params.getlist("filter[external_id]")
        )
        found = [
            self._shown(t, with_reviews)
            for t in self.templates.values()
            if not wanted or t.get("external_id") in wanted
        ]
        return self._page(request, found, "chats_templates")

    async def _create_templates(self, request: Request) -> Response:
        body = await _body(request)
        if (problem := self._template_batch(body, update=False)) is not None:
            return problem
        created = [self._shown(self._store_template(item, self._next_id()), False) for item in body]
        return _json({"_total_items": len(created), "_embedded": {"chats_templates": created}})

    async def _update_templates(self, request: Request) -> Response:
        body = await _body(request)
        if (problem := self._template_batch(body, update=True)) is not None:
            return problem
        updated = [self._shown(self._store_template(item, item["id"]), False) for item in body]
        return _json({"_total_items": len(updated), "_embedded": {"chats_templates": updated}})

    async def _delete_templates(self, request: Request) -> Response:
        body = await _body(request)
        if not isinstance(body, list) or not all(isinstance(i, dict) and isinstance(i.get("id"), int) for i in body):
            return _problem(400, "Bad Request", "The request body must be an array of {id}")
        missing = [i["id"] for i in body if i["id"] not in self.templates]
        if missing:
            return _problem(404, "Not Found", f"templates not found: {missing}")
        for item in body:
            del self.templates[item["id"]]
        return Response(status_code=204)

    async def _send_to_review(self, request: Request) -> Response:
        template = self.templates.get(request.path_params["template_id"])
        if template is None:
            return _problem(404, "Not Found", "template not found")
        if template.get("type") != "waba":
            return _problem(400, "Bad Request", "only waba templates are sent to review")
        waba_sources = [
            sid
            for sid, s in self.sources.items()
            if any((svc.get("params") or {}).get("waba") for svc in s.get("services") or [])
        ]
        if not waba_sources:
            return _problem(400, "Bad Request", "the integration has no source with services[].params.waba = true")
        reviews = [
            {"id": self._next_id(), "source_id": sid, "status": "review", "reject_reason": ""} for sid in waba_sources
        ]
        template["reviews"] = reviews
        return _json({"_embedded": {"reviews": reviews}})

    async def _set_review(self, request: Request) -> Response:
        template = self.templates.get(request.path_params["template_id"])
        review_id = request.path_params["review_id"]
        review = next((r for r in (template or {}).get("reviews", []) if r["id"] == review_id), None)
        if template is None or review is None:
            return _problem(404, "Not Found", "template or review not found")
        body = await _body(request)
        status = body.get("status") if isinstance(body, dict) else None
        if status not in _REVIEW_STATUSES:
            return _invalid(
                {0: [_err("status", f"must be one of {', '.join(_REVIEW_STATUSES)}", "NotSupportedChoice")]}
            )
        review["status"] = status
        review["reject_reason"] = str(body.get("reject_reason") or "")
        return _json(review)

    # -- webhooks ------------------------------------------------------------------------
    async def _subscribe_webhook(self, request: Request) -> Response:
        body = await _body(request)
        errs = []
        if not isinstance(body, dict):
            return _problem(400, "Bad Request", "The request body must be an object")
        destination: Any = body.get("destination")
        if not isinstance(destination, str) or not re.match(r"https?://[^\s/]+", destination):
            errs.append(_err("destination", "This value is not a valid URL.", "InvalidUrl"))
        settings = body.get("settings")
        if not isinstance(settings, list) or not settings or not all(isinstance(s, str) for s in settings):
            errs.append(_err("settings", "a non-empty array of event names is required", "NotBlank"))
        if errs:
            return _invalid({0: errs})
        now = int(self.wall_clock())
        old = self.webhooks.get(destination, {"id": self._next_id(), "created_at": now})
        hook = {
            **old,
            "destination": destination,
            "settings": settings,
            "sort": body.get("sort", old.get("sort", 1)),
            "disabled": False,
            "account_id": self.account["id"],
            "created_by": self.account["current_user_id"],
            "updated_at": now,
        }
        self.webhooks[destination] = hook
        return _json(hook, 201)


class _BadJSON(Exception):
    pass


async def _body(request: Request) -> Any:
    """The request's JSON body; ``None`` when empty or not JSON-typed; :class:`_BadJSON` when broken."""
    raw = await request.body()
    if not raw or "json" not in request.headers.get("content-type", "json"):
        return None
    try:
        return msgspec.json.decode(raw)
    except msgspec.DecodeError:
        raise _BadJSON from None
