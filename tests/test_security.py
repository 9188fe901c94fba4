"""Secret checks are constant time, everywhere: each one is decided by ``hmac.compare_digest``."""

from __future__ import annotations

import hashlib
import hmac
import textwrap
import time
from pathlib import Path

import httpx
import pytest
from rig import ACCOUNT, CHANNEL, SCOPE, SECRET, rig

from amoconnect.amojo.client import AmojoClient
from amoconnect.errors import AmojoError
from amoconnect.media import MediaStore
from amoconnect.signing import matching_secret, same_secret
from amoconnect.testing.fake_amojo import FakeAmojo
from amoconnect.testing.security import digest_verdict, secret_comparisons

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).parent.parent
SOURCES = sorted((ROOT / "amoconnect").rglob("*.py")) + sorted(ROOT.glob("plugins/*/amoconnect_*/**/*.py"))


def test_no_secret_is_compared_with_eq_anywhere() -> None:
    assert len(SOURCES) > 60 and any("plugins" in str(p) for p in SOURCES)
    assert secret_comparisons(SOURCES, ROOT) == []


def test_the_scan_finds_what_it_is_for(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        textwrap.dedent(
            """
            def check(self, request, body, token, expected):
                if token != self.token: ...
                if body.get("secret") == self.config.secret: ...
                if request.headers["X-Signature"] in self.allowed: ...
                if given_sig == expected: ...
                if auth == f"Bearer {self.access_token}": ...
                if mode == "webhook" or token == "" or token is None or len(token) == 40: ...
                if body.get("type") == kind: ...
            """
        )
    )
    found = secret_comparisons([sample])
    assert [line.split(": ", 1)[1] for line in found] == [
        "token != self.token",
        "body.get('secret') == self.config.secret",
        "request.headers['X-Signature'] in self.allowed",
        "given_sig == expected",
        "auth == f'Bearer {self.access_token}'",
    ]


def test_same_secret_is_compare_digest_and_takes_only_text() -> None:
    with digest_verdict() as calls:
        assert same_secret("s3cret-value", "s3cret-value")
        assert same_secret(b"s3cret-value", "s3cret-value")
        assert not same_secret("s3cret-valuE", "s3cret-value")
        assert not same_secret("ключ", "key")  # non-ASCII text is compared, not a TypeError
    assert len(calls) == 4
    assert not same_secret(None, "x") and not same_secret(12, "12")
    with digest_verdict(True):
        assert same_secret("anything", "s3cret-value")


def test_matching_secret_compares_every_candidate() -> None:
    candidates = ["token-a", "token-b", "token-c"]
    with digest_verdict() as calls:
        assert matching_secret("token-a", candidates) == "token-a"
    assert len(calls) == 3  # no early exit: the time does not tell which one matched
    assert matching_secret("token-x", candidates) is None


def sign(body: bytes, secret: str = SECRET) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha1).hexdigest()


HOOK = (
    b'{"account_id":"' + ACCOUNT.encode() + b'","time":1639572261,"message":{"conversation":{"id":"c-1",'
    b'"client_id":"lb:c1"},"sender":{"id":"u"},"receiver":{"id":"r","client_id":"lb:c1"},"timestamp":1639572260,'
    b'"msec_timestamp":1639572260980,"message":{"id":"m-1","type":"text","text":"Hello"}}}'
)


async def test_amocrm_x_signature_is_decided_by_compare_digest(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        r.runtime.relay.concurrency = 0
        url = f"/amocrm/{SCOPE}"
        with digest_verdict(False) as calls:
            refused = await r.client.post(url, content=HOOK, headers={"X-Signature": sign(HOOK)})
        assert refused.status_code == 401 and calls
        with digest_verdict(True):
            forged = await r.client.post(url, content=HOOK, headers={"X-Signature": sign(HOOK, "another-secret")})
        assert forged.status_code == 200  # only compare_digest said yes: it is what decides
        assert (await r.client.post(url, content=HOOK, headers={"X-Signature": sign(HOOK)})).status_code == 200


def test_media_tokens_are_decided_by_compare_digest(tmp_path: Path) -> None:
    media = MediaStore(tmp_path, "media-secret-0123456789")
    now = time.time()
    good = media.token("A" * 22, now=now)
    forged = good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB")
    assert media.resolve(forged, now=now) is None
    with digest_verdict(False) as calls:
        assert media.resolve(good, now=now) is None
    assert calls
    with digest_verdict(True):
        assert media.resolve(forged, now=now) == "A" * 22


async def test_the_fake_amojo_checks_signatures_with_compare_digest() -> None:
    fake = FakeAmojo(CHANNEL, SECRET)
    fake.connect(ACCOUNT)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=fake.app), base_url="http://amojo.test") as http:
        wrong = AmojoClient(CHANNEL, "not-the-channel-secret", base_url="http://amojo.test", client=http)
        with pytest.raises(AmojoError) as refused:
            await wrong.typing(SCOPE, conversation_id="c-1", sender_id="u-1")
        assert refused.value.status == 403
        with digest_verdict(True) as calls:
            await wrong.typing(SCOPE, conversation_id="c-1", sender_id="u-1")
        assert calls
