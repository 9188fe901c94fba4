"""The console's session: a signed cookie with an expiry, and the CSRF token every form carries.

The cookie holds ``base64url(JSON) "." hex(HMAC-SHA256(key, base64url(JSON)))``: who is signed in
(the operator, or one account's admin), the CSRF token, the pending OAuth ``state`` of a "sign in
with amoCRM" under way, the chosen language and when it expires. Nothing secret is in it; the
signature stops anyone from writing one. The cookie is ``HttpOnly``, ``SameSite=Lax`` (the OAuth
callback arrives by a top-level redirect from amoCRM, which ``Strict`` would strip it from) and
``Secure`` when the request came over HTTPS (:func:`is_https`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from typing import Literal

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from ..signing import same_secret

__all__ = ["COOKIE", "Session", "SessionCodec", "is_https", "new_token"]

COOKIE = "amoconnect_console"
Role = Literal["", "operator", "account"]


def new_token() -> str:
    """A fresh random token (CSRF, OAuth state)."""
    return secrets.token_urlsafe(24)


class Session(msgspec.Struct, kw_only=True):
    """What the cookie says; ``role`` empty: nobody signed in yet (a visitor with a CSRF token)."""

    csrf: str = msgspec.field(default_factory=new_token)
    role: Role = ""
    account: str = ""
    """The account an account's admin may see and change (role ``account``)."""
    state: str = ""
    """The OAuth ``state`` of an authorisation this browser started; the callback must bring it back."""
    lang: str = ""
    """The language chosen with the switch; empty: from the account's domain or Accept-Language."""
    expires: float = 0.0

    def may_see(self, account: str) -> bool:
        """Whether this session may see and change ``account``."""
        return self.role == "operator" or (self.role == "account" and self.account == account)


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(Session).decode


def is_https(request: Request, *, trust_proxy: bool, public_https: bool) -> bool:
    """Whether cookies must be ``Secure``: the public URL is HTTPS, the request came over HTTPS, or a
    trusted proxy says so in ``X-Forwarded-Proto``."""
    if public_https or request.url.scheme == "https":
        return True
    forwarded = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    return trust_proxy and forwarded == "https"


class SessionCodec:
    """Reads and writes sessions signed with ``key``; they last ``lifetime`` seconds from sign-in."""

    def __init__(self, key: str, lifetime: float, *, trust_proxy: bool = False, public_https: bool = False) -> None:
        self._key = hashlib.sha256(b"amoconnect-console-session\0" + key.encode()).digest()
        self.lifetime = lifetime
        self.trust_proxy, self.public_https = trust_proxy, public_https

    def _sign(self, payload: bytes) -> str:
        return hmac.new(self._key, payload, hashlib.sha256).hexdigest()

    def dumps(self, session: Session) -> str:
        payload = base64.urlsafe_b64encode(_encode(session)).rstrip(b"=")
        return f"{payload.decode()}.{self._sign(payload)}"

    def loads(self, cookie: str | None) -> Session | None:
        """The session of a cookie, or None when it is missing, forged, malformed or expired."""
        if not cookie or len(cookie) > 4096:
            return None
        payload, _, signature = cookie.partition(".")
        if not same_secret(signature, self._sign(payload.encode())):
            return None
        try:
            session = _decode(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        except (msgspec.DecodeError, ValueError):
            return None
        if session.expires < time.time():
            return None
        return session

    def read(self, request: Request) -> Session | None:
        """The request's session, if it has a valid one."""
        return self.loads(request.cookies.get(COOKIE))

    def fresh(self) -> Session:
        """A new visitor's session."""
        return Session(expires=time.time() + self.lifetime)

    def signed_in(self, role: Role, account: str, before: Session) -> Session:
        """A new session for whoever just signed in (a fresh CSRF token; the language kept)."""
        return Session(role=role, account=account, lang=before.lang, expires=time.time() + self.lifetime)

    def write(self, request: Request, response: Response, session: Session) -> None:
        """Set the cookie of ``session`` on ``response``."""
        response.set_cookie(
            COOKIE,
            self.dumps(session),
            max_age=max(1, int(session.expires - time.time())),
            path="/",
            httponly=True,
            samesite="lax",
            secure=is_https(request, trust_proxy=self.trust_proxy, public_https=self.public_https),
        )
