"""The VK edge's guards: the Callback API secret, the body cap, fuzzing, and no secret in any output."""

from __future__ import annotations

import collections
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from amoconnect.adapter import WebhookRequest
from amoconnect.errors import SignatureError
from amoconnect.testing import security
from amoconnect.testing.fakes import ClientMedia
from amoconnect.testing.fuzz import FUZZ, check_webhook, running, webhook_bodies
from amoconnect.testing.kit import ConnectorRig, connector
from hypothesis import example, given
from vk_rig import Rig

from amoconnect_vk.fake import FakeVK

pytestmark = pytest.mark.anyio

TOKEN = "vk1.a.distinctCommunityToken-8Gh3Jk5Lq"
SECRET = "vk-callback-secret-2Wx7Ec4Rv"
CONFIRMATION = "c0nf1rm9"
API = "http://vk.messenger.test"
SETTINGS = {
    "token": TOKEN,
    "group_id": 1,
    "api_url": API,
    "secret": SECRET,
    "confirmation_code": CONFIRMATION,
    "configure": True,
}
HOOK = "/hooks/vk/main"


def make_fake(http: httpx.AsyncClient) -> FakeVK:
    fake = FakeVK(token=TOKEN, group_id=1, http=http, delivery_backoff=0.01)
    fake.confirmation_code = CONFIRMATION
    return fake


def event(secret: str = SECRET, group_id: int = 1, **body: Any) -> bytes:
    message = {"id": 7, "date": 1700000000, "peer_id": 8, "from_id": 8, "text": "hi", "conversation_message_id": 3}
    fields = {"type": "message_new", "event_id": "e1", "v": "5.199", "object": {"message": message}, **body}
    return json.dumps({"group_id": group_id, "secret": secret, **fields}).encode()


async def test_the_callback_secret_is_decided_by_compare_digest(make_adapter: Callable[..., Rig], fake: FakeVK) -> None:
    adapter = make_adapter().adapter
    guessed = WebhookRequest(method="POST", body=event("guessed", fake.group_id))
    with pytest.raises(SignatureError):
        await adapter.verify(guessed)
    with security.digest_verdict(True) as calls:
        assert await adapter.verify(guessed) is None
    assert calls
    right = WebhookRequest(method="POST", body=event(adapter.config.secret, fake.group_id))
    with security.digest_verdict(False), pytest.raises(SignatureError):
        await adapter.verify(right)


async def test_the_fake_vk_api_checks_its_token_with_compare_digest() -> None:
    fake = FakeVK(token=TOKEN)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=fake), base_url=API) as http:
        params = {"access_token": "guessed", "v": "5.199", "group_id": "1"}
        assert "error" in (await http.post("/method/groups.getById", data=params)).json()
        with security.digest_verdict(True) as calls:
            assert "response" in (await http.post("/method/groups.getById", data=params)).json()
        assert calls


async def test_webhooks_over_the_cap_are_refused_while_streaming(tmp_path: Path) -> None:
    config = {"server": {"public_url": "http://amoconnect", "max_messenger_body_bytes": 64 * 1024}}
    async with connector("amoconnect_vk.plugin", make_fake=make_fake, settings=SETTINGS, config=config) as rig:
        rig.runtime.relay.concurrency = 0
        await security.check_body_cap(rig.client, HOOK, 64 * 1024, rig.runtime.store)


def test_webhooks_survive_fuzzing(tmp_path: Path) -> None:
    seen: collections.Counter[int] = collections.Counter()
    rig_cm = connector("amoconnect_vk.plugin", make_fake=make_fake, settings=SETTINGS, workdir=tmp_path)
    with running(rig_cm) as (rig, portal):
        fake: FakeVK = rig.fake
        portal.call(lambda: fake.client_writes(8, "hi", media=ClientMedia(kind="picture", content=b"\x89PNG")))
        sample = fake.events[-1]
        valid = json.dumps({**sample, "secret": SECRET}).encode()
        rig.runtime.relay.concurrency = 0

        @FUZZ
        @example(body=valid)
        @example(body=event(type="confirmation", object={}))
        @example(body=b'{"type": "message_new", "object": ' + b"[" * 1000 + b"]" * 1000 + b"}")  # no secret
        @example(body=b'{"type": "message_new", "group_id": 1, "object": {"text": "\xff"}}')
        @given(body=webhook_bodies({**sample, "secret": SECRET}))
        def fuzz(body: bytes) -> None:
            seen[check_webhook(portal, rig.runtime, "POST", HOOK, body).status_code] += 1

        fuzz()
    assert seen[200] and seen[400] and seen[401], seen


async def test_no_secret_reaches_a_log_line_an_answer_or_amocrm(tmp_path: Path) -> None:
    options, redacted = security.secret_rig("vk", SETTINGS, tmp_path)
    with security.captured_logs(redacted) as logs:
        async with connector("amoconnect_vk.plugin", make_fake=make_fake, **options) as rig:
            recorder = security.ResponseRecorder.record(rig.runtime)
            fake: FakeVK = rig.fake
            await fake.client_writes(8, "Привет")
            await rig.arrived("8")
            assert (await rig.post_webhook(event("guessed"))).status_code == 401
            assert (await rig.post_webhook(event(SECRET)[:-3])).status_code in (400, 401)
            fake.fail_next(1, 901, method="messages.send")  # the client blocked the community
            refused = await rig.manager_writes("8", "are you there?")
            await rig.eventually(lambda: rig.amojo.message(refused.message_id or "").statuses)
            await security.core_failures(rig, "8", lambda text: fake.client_writes(8, text))
            await _media_fetch_fails(rig, fake)
            said = await security.everything_said(rig, recorder, logs)
    assert fake.servers and all(s.status == "ok" for s in fake.servers.values())  # confirmed with the code
    said = [text for text in said if text != CONFIRMATION]  # the answer to VK's confirmation request
    assert security.leaks(said, [*security.CORE_SECRETS, TOKEN, SECRET, CONFIRMATION]) == []
    assert sum("no answer from" in line for line in said) >= 1


async def _media_fetch_fails(rig: ConnectorRig, fake: FakeVK) -> None:
    dead = len(await rig.runtime.store.dead_letters())
    assert rig.router is not None
    rig.router.fail_next(1000)
    await fake.client_writes(8, "a photo", media=ClientMedia(kind="picture", content=b"\x89PNG"))

    async def died() -> bool:
        return len(await rig.runtime.store.dead_letters()) > dead

    await rig.eventually(died)
    rig.router.fail_next(0)


async def test_media_urls_pointing_inside_are_not_fetched(tmp_path: Path) -> None:
    async with connector("amoconnect_vk.plugin", make_fake=make_fake, settings=SETTINGS, workdir=tmp_path) as rig:
        fake: FakeVK = rig.fake
        await fake.client_writes(8, "with a photo", media=ClientMedia(kind="picture", content=b"\x89PNG"))
        await rig.arrived("8")
        photo = fake.events[-1]
        message = photo["object"]["message"]
        message.update(id=message["id"] + 100, conversation_message_id=message["conversation_message_id"] + 100)
        text = json.dumps({**photo, "event_id": "inside", "secret": SECRET})
        inside = text.replace(fake.base_url, "http://10.20.30.40").replace('"with a photo"', '"look inside"')
        assert "http://10.20.30.40" in inside
        assert (await rig.post_webhook(inside.encode())).status_code == 200
        (_, noted) = await rig.arrived("8", 2)
        assert noted.text is not None and "not relayed" in noted.text and "10.20.30.40, a private address" in noted.text
        url = "http://169.254.169.254/latest/meta-data/iam/security-credentials/"
        sent = await rig.manager_sends_media("8", "picture", url)
        (status,) = await rig.statuses(sent.message_id or "")
        assert status.delivery_status == -1 and "cloud metadata address" in (status.error or "")
