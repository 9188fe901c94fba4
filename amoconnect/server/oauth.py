"""amoCRM's hooks for the integration an account installs: ``GET /oauth/callback`` and ``GET /oauth/disconnect``.

**Install.** When an account's admin allows the integration, amoCRM sends the browser to the
redirect URI with ``code`` and ``referer`` (the account's host, ``shop.amocrm.ru``). ``referer`` is
the sender's to choose while the exchange carries the client secret, so only a host of
:data:`ACCOUNT_HOST` (one label under ``amocrm.ru``, ``amocrm.com`` or ``kommo.com``: no user
info, port, path, IP literal or look-alike) is ever contacted. The code is exchanged there, the
account read (``GET /api/v4/account?with=amojo_id``), the channel connected to it (its scope id)
and the account recorded with its tokens, active (a re-install brings a disconnected account back).
A code amoCRM refuses (forged, used, expired) records nothing. With the console, ``state`` is
checked first where this browser started the flow (:mod:`amoconnect.console.amocrm_sign_in`), and a
successful install signs the admin in and sends the browser to the account's console page.

When the admin presses "Deny" on amoCRM's page, amoCRM sends the browser to the redirect URI with
``error=access_denied`` (RFC 6749, 4.1.2.1) and no code: that is answered 200 with a page saying the
installation was cancelled in amoCRM and how to install after all. Every other callback that installs
nothing (another ``error``, no code, a bad ``state``, a host that is not an account's, a code amoCRM
refuses, amoCRM unreachable) is answered with its status and, for a browser (``Accept: text/html``), the
console's page saying why (:data:`REFUSALS`); anything else gets JSON ``{"error", "detail"}``.

When an account's admin turns the integration off, amoCRM calls the integration's disconnect
hook with ``account_id`` (amoCRM's numeric id of the account), ``client_uuid`` (the
integration's id) and ``signature``: the hex HMAC-SHA256 of ``client_uuid + "|" + account_id``
keyed with the integration's secret, i.e. ``hash_hmac('sha256', $clientId . '|' . $accountId,
$clientSecret)`` — amoCRM's OAuth "step by step" page, section "disconnect hook"
(https://www.amocrm.ru/developers/content/oauth/step-by-step#disconnect_hook).

A good signature disconnects the account (:meth:`amoconnect.tenants.Tenants.disconnect_account`:
its sources' webhooks unregistered, its queued jobs made dead letters with the reason, its further
webhooks refused, the channel disconnected from it). A wrong or missing one changes nothing (401,
400). A replay, or a hook for an account the connector does not know, changes nothing either
(200): the signature has no timestamp, so replays are expected and must be harmless.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Protocol

import httpx
import msgspec
import structlog
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ..amocrm import Account, AmoCRMClient, OAuthApp, Tokens
from ..config import OAuthConfig
from ..errors import AmoconnectError, RemoteError
from ..store.registry import AccountRecord
from ..tenants import Tenants

__all__ = ["ACCOUNT_HOST", "REFUSALS", "Installer", "SignIn", "account_host", "disconnect_signature", "oauth_routes"]

ACCOUNT_HOST = re.compile(r"([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)\.(amocrm\.ru|amocrm\.com|kommo\.com)")
"""An amoCRM or Kommo account's host: one label (the subdomain) under one of the three domains."""

Connect = Callable[[str], Awaitable[str]]
"""Connect the channel to an amojo account id; the scope id."""


def account_host(referer: str) -> tuple[str, str] | None:
    """The (subdomain, domain) of ``referer`` when it is exactly an account's host (optionally as an
    ``https://`` origin), else None."""
    text = referer.strip().lower()
    if "://" in text:
        parts = urllib.parse.urlsplit(text)
        if parts.scheme != "https" or parts.username or parts.password or parts.port or parts.path not in ("", "/"):
            return None
        if parts.query or parts.fragment:
            return None
        text = parts.netloc
    match = ACCOUNT_HOST.fullmatch(text)
    return (match.group(1), match.group(2)) if match else None


def _not_a_host(referer: str) -> str:
    return f"referer {referer[:100]!r} is not an amoCRM or Kommo account's host"


log = structlog.get_logger("amoconnect.oauth")

_encode = msgspec.json.Encoder().encode


def disconnect_signature(client_secret: str, client_uuid: str, account_id: str) -> str:
    """amoCRM's signature of a disconnect hook (module docstring)."""
    message = f"{client_uuid}|{account_id}".encode()
    return hmac.new(client_secret.encode(), message, hashlib.sha256).hexdigest()


def _json(status: int, body: dict[str, object]) -> Response:
    return Response(_encode(body), status_code=status, media_type="application/json")


class Installer:
    """Installs an account from an authorisation code: exchange, read the account, connect, record.

    ``http`` is the HTTP client toward amoCRM (tests point it at the fake); ``connect`` connects the channel.
    """

    def __init__(
        self, tenants: Tenants, oauth: OAuthConfig, connect: Connect, http: httpx.AsyncClient | None = None
    ) -> None:
        self.tenants = tenants
        self.oauth = oauth
        self._connect = connect
        self._http = http

    async def install(self, code: str, referer: str) -> AccountRecord:
        """The account recorded from ``code`` issued by the account at ``referer``; :class:`AmoconnectError` if not."""
        host = account_host(referer)
        if host is None:
            raise AmoconnectError(_not_a_host(referer))
        subdomain, domain = host
        app = OAuthApp(
            client_id=self.oauth.client_id, client_secret=self.oauth.client_secret, redirect_uri=self.oauth.redirect_uri
        )
        url = f"https://{subdomain}.{domain}"
        async with AmoCRMClient(url, oauth=app, client=self._http) as rest:
            tokens: Tokens = await rest.exchange_code(code)
            account: Account = await rest.get_account()
        if not account.amojo_id:
            raise AmoconnectError(f"amoCRM gave no amojo_id for {url}")
        scope_id = await self._connect(account.amojo_id)
        registry = self.tenants.registry
        existing = registry.account_by_scope(scope_id)
        name = existing.name if existing is not None else subdomain
        if existing is None and registry.account(name) is not None:
            name = f"{subdomain}-{domain.split('.')[0]}-{account.id}"
        record = AccountRecord(
            name=name,
            amojo_id=account.amojo_id,
            scope_id=scope_id,
            subdomain=subdomain,
            domain=domain,
            rest_url=url,
            token=tokens.access_token,
            refresh_token=tokens.refresh_token or "",
            token_expires_at=tokens.expires_at,
            installed_at=time.time(),
            amocrm_id=account.id,
        )
        await registry.put_account(record)
        return record


class SignIn(Protocol):
    """The console's side of the callback: the ``state`` check, where the browser goes after, and the
    page a browser is shown when the install did not happen."""

    def state_ok(self, request: Request, state: str) -> bool:
        """Whether ``state`` is what this browser's flow expects (a flow started here must bring its own back)."""

    def installed(self, request: Request, account: AccountRecord) -> Response:
        """The answer after ``account`` installed: its admin signed in, sent to its page."""

    def refused(self, request: Request, kind: str, status: int, detail: str, domain: str) -> Response:
        """A readable page saying why nothing was installed (``kind``: one of :data:`REFUSALS`) and
        how to try again, in the language of ``domain`` (the account's, when known)."""


REFUSALS = ("cancelled", "denied", "incomplete", "bad_state", "bad_host", "refused", "unreachable", "not_set_up")
"""Why a callback installed nothing: the admin pressed "Deny" on amoCRM's page; amoCRM sent another
``error``; no ``code`` or ``referer``; a ``state`` that is not this browser's; a ``referer`` that is not
an account's host; amoCRM refused the code (forged, used, expired) or the account; amoCRM could not
be reached; no ``[oauth]``."""


def _wants_html(request: Request) -> bool:
    """Whether the request is a browser's (it accepts HTML): it gets a page, anything else JSON."""
    return "text/html" in request.headers.get("accept", "")


def oauth_routes(
    tenants: Tenants, oauth: OAuthConfig, installer: Installer | None = None, sign_in: SignIn | None = None
) -> list[BaseRoute]:
    """The integration's hooks (none answer without ``[oauth] client_id`` and ``client_secret``);
    ``sign_in`` checks ``state``, signs the installing admin in to the console and shows a browser
    why an install did not happen."""

    def refuse(request: Request, kind: str, status: int, error: str, detail: str, domain: str = "") -> Response:
        if sign_in is not None and _wants_html(request):
            return sign_in.refused(request, kind, status, detail, domain)
        return _json(status, {"error": error, "detail": detail})

    async def callback(request: Request) -> Response:
        if installer is None or not (oauth.client_id and oauth.client_secret and oauth.redirect_uri):
            return refuse(request, "not_set_up", 404, "not_found", "no integration is set up: set [oauth]")
        query = request.query_params
        code, referer, error = query.get("code", ""), query.get("referer", ""), query.get("error", "")
        host = account_host(referer)
        domain = host[1] if host is not None else ""
        if error == "access_denied":
            # The admin pressed "Deny" on amoCRM's page (RFC 6749, 4.1.2.1): a decision, not a
            # failure of this request, so 200 and a page saying how to install after all.
            log.info("install cancelled in amoCRM", referer=referer[:100])
            detail = "the installation was cancelled in amoCRM: nothing was installed"
            return refuse(request, "cancelled", 200, "access_denied", detail, domain)
        if error:
            log.warning("install refused by amoCRM", error=error[:100], referer=referer[:100])
            detail = f"amoCRM answered error={error[:100]!r}: nothing was installed"
            return refuse(request, "denied", 400, "authorization_error", detail, domain)
        if not code or not referer:
            return refuse(request, "incomplete", 400, "bad_request", "code and referer are required", domain)
        state = query.get("state", "")
        if sign_in is not None and not sign_in.state_ok(request, state):
            log.warning("install refused: state is not the one this browser's sign-in expects", referer=referer[:100])
            detail = "state is missing, forged or already used: start the sign-in again"
            return refuse(request, "bad_state", 400, "bad_state", detail, domain)
        if host is None:
            log.warning("install refused", referer=referer[:100], error="not an account host")
            return refuse(request, "bad_host", 400, "install_failed", _not_a_host(referer))
        try:
            account = await installer.install(code, referer)
        except (RemoteError, httpx.HTTPError) as exc:
            if isinstance(exc, RemoteError) and not exc.retryable:  # amoCRM answered: the code or account is refused
                log.warning("install refused", referer=referer[:100], error=str(exc))
                return refuse(request, "refused", 400, "install_failed", str(exc), domain)
            # no answer, or amoCRM's own failure (5xx) once the retries ran out
            log.warning("install failed: amoCRM could not be reached", referer=referer[:100], error=str(exc))
            detail = f"amoCRM could not be reached: {exc}"
            return refuse(request, "unreachable", 502, "amocrm_unreachable", detail, domain)
        except AmoconnectError as exc:
            log.warning("install refused", referer=referer[:100], error=str(exc))
            return refuse(request, "refused", 400, "install_failed", str(exc), domain)
        log.info("account installed the integration", account=account.name, scope_id=account.scope_id)
        if sign_in is not None:
            return sign_in.installed(request, account)
        return Response(f"{account.subdomain}.{account.domain} is connected.", media_type="text/plain; charset=utf-8")

    async def disconnect(request: Request) -> Response:
        if not (oauth.client_id and oauth.client_secret):
            return _json(404, {"error": "not_found", "detail": "no integration is set up: set [oauth]"})
        query = request.query_params
        account_id, client_uuid, signature = (query.get(k, "") for k in ("account_id", "client_uuid", "signature"))
        if not (account_id and client_uuid and signature):
            return _json(400, {"error": "bad_request", "detail": "account_id, client_uuid and signature are required"})
        expected = disconnect_signature(oauth.client_secret, client_uuid, account_id)
        if client_uuid != oauth.client_id or not hmac.compare_digest(expected, signature.lower()):
            log.warning("disconnect hook refused: bad signature", account_id=account_id)
            return _json(401, {"error": "bad_signature", "detail": "signature does not match"})
        account = tenants.registry.account_by_amocrm_id(int(account_id)) if account_id.isdigit() else None
        if account is None or account.fixed:
            log.info("disconnect hook for an account not installed here", account_id=account_id)
            return _json(200, {"ok": True, "known": False})
        outcome = await tenants.disconnect_account(account.name, reason="uninstalled the integration in amoCRM")
        log.info(
            "account uninstalled the integration",
            account=account.name,
            steps=[f"{s.step}: {s.outcome}" for s in outcome.steps],
        )
        return _json(200, {"ok": True, "known": True, "steps": msgspec.to_builtins(outcome.steps)})

    return [
        Route("/oauth/callback", callback, methods=["GET"]),
        Route("/oauth/disconnect", disconnect, methods=["GET"]),
    ]
