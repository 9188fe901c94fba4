"""The WhatsApp edge's guards: X-Hub-Signature-256, the handshake and review tokens, body caps,
fuzzing every route, and no secret in any output."""

from __future__ import annotations

import collections
import hashlib
import hmac
import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from amoconnect.adapter import WebhookRequest
from amoconnect.errors import SignatureError
from amoconnect.testing import security
from amoconnect.testing.fuzz import FUZZ, check_webhook, header_values, running, webhook_bodies
from amoconnect.testing.kit import connector
from hypothesis import example, given
from hypothesis import strategies as st
from whatsapp_rig import APP_SECRET, Rig, world

from amoconnect_whatsapp.adapter import REVIEW_ROUTE
from amoconnect_whatsapp.fake import FakeWhatsApp
from amoconnect_whatsapp.webhooks import SIGNATURE_HEADER

pytestmark = pytest.mark.anyio

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def hub_signature(body: bytes, secret: str = APP_SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


async def test_x_hub_signature_and_the_handshake_are_decided_by_compare_digest(
    make_adapter: Callable[..., Rig],
) -> None:
    adapter = make_adapter().adapter
    body = b'{"object":"whatsapp_business_account","entry":[]}'
    forged = WebhookRequest(
        method="POST", headers=httpx.Headers({SIGNATURE_HEADER: hub_signature(body, "x")}), body=body
    )
    signed = WebhookRequest(method="POST", headers=httpx.Headers({SIGNATURE_HEADER: hub_signature(body)}), body=body)
    with pytest.raises(SignatureError):
        await adapter.verify(forged)
    with security.digest_verdict(True) as calls:
        assert await adapter.verify(forged) is None
    assert calls
    with security.digest_verdict(False), pytest.raises(SignatureError):
        await adapter.verify(signed)
    query = httpx.QueryParams({"hub.mode": "subscribe", "hub.verify_token": "guessed", "hub.challenge": "42"})
    handshake = WebhookRequest(method="GET", query=query)
    assert (await adapter.verify(handshake)).status == 403  # type: ignore[union-attr]
    with security.digest_verdict(True):
        answer = await adapter.verify(handshake)
    assert answer is not None and (answer.status, answer.body) == (200, b"42")


async def test_the_review_token_and_the_fake_graph_api_tokens_are_decided_by_compare_digest(tmp_path: Path) -> None:
    async with world(tmp_path, template_review=True) as w:
        url = f"/hooks/whatsapp/wa1/{REVIEW_ROUTE}?token=guessed"
        assert (await w.runtime.client.post(url, content=b"x=1", headers=FORM)).status_code == 403
        with security.digest_verdict(True) as calls:
            assert (await w.runtime.client.post(url, content=b"x=1", headers=FORM)).status_code == 200
        assert calls
    fake = FakeWhatsApp()
    number = fake.add_number()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=fake.app), base_url="http://graph.test") as http:
        guessed = {"Authorization": "Bearer guessed"}
        assert (await http.get(f"/v21.0/{number.phone_number_id}", headers=guessed)).status_code == 401
        with security.digest_verdict(True) as calls:
            assert (await http.get(f"/v21.0/{number.phone_number_id}", headers=guessed)).status_code == 200
        assert calls


async def test_every_route_refuses_bodies_over_the_cap_while_streaming(tmp_path: Path) -> None:
    async with world(tmp_path, template_review=True) as w:
        w.runtime.relay.concurrency = 0
        cap = w.runtime.config.server.max_messenger_body_bytes
        assert cap == 4 * 2**20
        signed = {SIGNATURE_HEADER: "sha256=" + "0" * 64}  # of the right form: the body is refused before the check
        await security.check_body_cap(w.runtime.client, "/hooks/whatsapp/wa1", cap, w.runtime.store, headers=signed)
        for unsigned in ({}, {SIGNATURE_HEADER: "sha1=" + "0" * 40}, {SIGNATURE_HEADER: "sha256=" + "0" * 63}):
            await security.check_refused_unread(
                w.runtime.client, "/hooks/whatsapp/wa1", w.runtime.store, headers=unsigned
            )
        review = w.adapter().review
        assert review is not None and review.token
        url = f"/hooks/whatsapp/wa1/{REVIEW_ROUTE}?token={review.token}"
        await security.check_body_cap(w.runtime.client, url, cap, w.runtime.store, headers=FORM)


def test_every_route_survives_fuzzing(tmp_path: Path) -> None:
    seen: collections.Counter[tuple[str, int]] = collections.Counter()
    with running(world(tmp_path, template_review=True)) as (w, portal):
        portal.call(w.fake.client_writes, w.fake.add_user("4915100000001", name="Anna"), "Hello")
        sample = w.fake.webhooks[-1]
        w.runtime.relay.concurrency = 0
        review = w.adapter().review
        assert review is not None and review.token is not None
        token = review.token
        valid = json.dumps(sample).encode()

        @FUZZ
        @example(route="post", body=valid, right=True, junk="", query={})  # the fuzzing starts where it passes
        @example(route="get", body=b"", right=True, junk="challenge", query={})
        @example(route="review", body=b"add[0][id]=1", right=True, junk="", query={})
        @given(
            route=st.sampled_from(["post", "get", "review"]),
            body=webhook_bodies(sample),
            right=st.booleans(),
            junk=header_values(),
            query=st.dictionaries(
                st.sampled_from(["hub.mode", "hub.verify_token", "hub.challenge", "token", "x"]), header_values()
            ),
        )
        def fuzz(route: str, body: bytes, right: bool, junk: str, query: dict[str, str]) -> None:
            if route == "post":
                headers = {SIGNATURE_HEADER: hub_signature(body) if right else junk}
                response = check_webhook(portal, w.runtime, "POST", "/hooks/whatsapp/wa1", body, headers=headers)
            elif route == "get":
                if right:
                    verify = w.adapter().config.verify_token
                    query = {**query, "hub.mode": "subscribe", "hub.verify_token": verify, "hub.challenge": junk}
                response = check_webhook(portal, w.runtime, "GET", "/hooks/whatsapp/wa1", params=query)
            else:
                params = {"token": token if right else junk}
                url = f"/hooks/whatsapp/wa1/{REVIEW_ROUTE}"
                response = check_webhook(portal, w.runtime, "POST", url, body, headers=FORM, params=params)
            seen[route, response.status_code] += 1

        fuzz()
    assert seen["post", 200] and seen["post", 400] and seen["post", 401], seen
    assert seen["get", 200] and seen["review", 200] and seen["review", 403], seen


async def test_no_secret_reaches_a_log_line_an_answer_or_amocrm(tmp_path: Path) -> None:
    access, app_secret, verify = "EAAGdistinctAccessToken7Hq2Lp9", "wa-app-secret-3Kd8Vn1Qz6", "wa-verify-token-8Jm4Rt"
    settings = {
        "phone_number_id": "1000000001",
        "waba_id": "2000000001",
        "token": access,
        "app_secret": app_secret,
        "verify_token": verify,
        "api_url": "http://whatsapp.messenger.test",
        "register_webhook": "number",
    }

    def make_fake(http: httpx.AsyncClient) -> FakeWhatsApp:
        fake = FakeWhatsApp(http=http, app_secret=app_secret, delivery_backoff=0.01)
        fake.add_number("1000000001", waba_id="2000000001", token=access)
        return fake

    options, redacted = security.secret_rig("whatsapp", settings, tmp_path)
    with security.captured_logs(redacted) as logs:
        async with connector("amoconnect_whatsapp.plugin", make_fake=make_fake, **options) as rig:
            recorder = security.ResponseRecorder.record(rig.runtime)
            fake: FakeWhatsApp = rig.fake
            async with fake.running():
                await rig.eventually(lambda: fake.numbers["1000000001"].webhook_url)
                user = fake.add_user("4915100000002", name="Anna")
                await fake.client_writes(user, "Hello")
                chat = user.wa_id or ""
                await rig.arrived(chat)
                body = json.dumps(fake.webhooks[-1]).encode()
                wrong = {SIGNATURE_HEADER: hub_signature(body, "guessed")}
                assert (await rig.post_webhook(body, headers=wrong)).status_code == 401
                params = {"hub.mode": "subscribe", "hub.verify_token": "guessed", "hub.challenge": "1"}
                assert (await rig.client.get("/hooks/whatsapp/main", params=params)).status_code == 403
                assert (await rig.post_webhook(b"x", path=REVIEW_ROUTE)).status_code == 403
                fake.fail_next(131026, count=1)  # Meta refuses the send
                refused = await rig.manager_writes(chat, "can you read this?")
                await rig.eventually(lambda: rig.amojo.message(refused.message_id or "").statuses)
                await security.core_failures(rig, chat, lambda text: fake.client_writes(user, text))
                said = await security.everything_said(rig, recorder, logs)
    assert security.leaks(said, [*security.CORE_SECRETS, access, app_secret, verify]) == []
    assert sum("no answer from" in line for line in said) >= 1
