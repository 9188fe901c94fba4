"""Signing requests to amojo and verifying amoCRM's webhooks (spec §2 and §3).

Pure functions, no IO. The body is always the exact bytes that travel: serialise once,
sign those bytes, send those bytes.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from email.utils import format_datetime

__all__ = [
    "CONTENT_TYPE",
    "EMPTY_MD5",
    "format_date",
    "matching_secret",
    "same_secret",
    "sign_request",
    "signature_for",
    "verify_signature",
]

CONTENT_TYPE = "application/json"
EMPTY_MD5 = "d41d8cd98f00b204e9800998ecf8427e"


def format_date(when: datetime | None = None) -> str:
    """RFC 2822 date with a numeric ``+0000`` zone, as amojo expects (``Mon, 02 Mar 2026 09:30:00 +0000``)."""
    if when is None:
        return _now_text()
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return format_datetime(when.astimezone(UTC).replace(microsecond=0))


_now_cache: tuple[int, str] = (0, "")


def _now_text() -> str:
    """The current date in RFC 2822, formatted once per second (formatting costs more than signing)."""
    global _now_cache
    second = int(time.time())
    if _now_cache[0] != second:
        _now_cache = (second, format_datetime(datetime.fromtimestamp(second, UTC)))
    return _now_cache[1]


def signature_for(secret: str, method: str, content_md5: str, content_type: str, date: str, path: str) -> str:
    """Lowercase hex HMAC-SHA1 over the five values joined by newlines (spec §2 step 4)."""
    if "?" in path:
        raise ValueError(f"the signed path must not carry a query string: {path!r}")
    message = "\n".join((method.upper(), content_md5, content_type, date, path))
    return hmac.digest(secret.encode("ascii"), message.encode("utf-8"), "sha1").hex()  # OpenSSL's one-shot HMAC


def sign_request(
    secret: str,
    method: str,
    path: str,
    body: bytes = b"",
    *,
    date: str | datetime | None = None,
    content_md5: str | None = None,
) -> dict[str, str]:
    """The four headers amojo requires: ``Date``, ``Content-Type``, ``Content-MD5``, ``X-Signature``.

    ``path`` is the request path without scheme, host or query string; a query string is cut
    off before signing, since amojo signs the bare path. ``body`` is hashed as given, so a
    bodiless request hashes the empty string; ``content_md5``, when given, is that hash already
    (the hex MD5 of ``body``: a request signed again for a retry need not hash its body again).
    """
    path = path.split("?", 1)[0]
    date_text = date if isinstance(date, str) else format_date(date)
    if content_md5 is None:
        content_md5 = hashlib.md5(body).hexdigest()
    return {
        "Date": date_text,
        "Content-Type": CONTENT_TYPE,
        "Content-MD5": content_md5,
        "X-Signature": signature_for(secret, method, content_md5, CONTENT_TYPE, date_text, path),
    }


def verify_signature(secret: str, body: bytes, signature: str | None) -> bool:
    """True when ``signature`` is the HMAC-SHA1 of the raw webhook ``body`` (spec §3), or of the
    body less exactly one trailing ``\n`` (as other amojo clients accept); nothing else.

    Constant time, both candidates always compared; a missing or malformed header is simply
    ``False``. Hex case is ignored.
    """
    if not signature or not isinstance(signature, str) or len(signature) != 40:
        return False
    try:
        given = bytes.fromhex(signature)
    except ValueError:
        return False
    key = secret.encode("ascii")
    whole = hmac.compare_digest(hmac.digest(key, body, "sha1"), given)
    trimmed = body[:-1] if body.endswith(b"\n") else body
    less_newline = hmac.compare_digest(hmac.digest(key, trimmed, "sha1"), given)
    return whole | less_newline


def same_secret(given: object, expected: str | bytes) -> bool:
    """Whether ``given`` (what a request carried) equals the secret ``expected``, in constant time.

    Anything that is not text or bytes (``None``, a number from a JSON body) is simply ``False``.
    """
    if isinstance(given, str):
        given = given.encode("utf-8", "surrogatepass")
    elif not isinstance(given, bytes):
        return False
    if isinstance(expected, str):
        expected = expected.encode("utf-8", "surrogatepass")
    return hmac.compare_digest(given, expected)


def matching_secret(given: object, candidates: Iterable[str]) -> str | None:
    """The candidate ``given`` equals, or ``None``; every candidate is compared, each in constant time."""
    found = None
    for candidate in candidates:
        if same_secret(given, candidate) and found is None:
            found = candidate
    return found
