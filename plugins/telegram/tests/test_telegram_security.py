"""The Telegram edge's guards: the secret-token check, the body cap, fuzzing, no secret in any output."""

from __future__ import annotations

import collections
import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from amoconnect.adapter import WebhookRequest
from amoconnect.errors import SignatureError
from amoconnect.testing import security
from amoconnect.testing.fuzz import FUZZ, check_webhook, header_values, running, webhook_bodies
from amoconnect.testing.kit import ConnectorRig, connector
from hypothesis import example, given
from hypothesis import strategies as st
from telegram_rig import Rig

from amoconnect_telegram.botapi import SECRET_TOKEN_HEADER
from amoconnect_telegram.fake import FakeTelegram

pytestmark = pytest.mark.anyio

BOT_TOKEN = "987654321:AAHdistinctBotTokenQ3x9Zk7Lm2Np"
SECRET_TOKEN = "tg-webhook-secret-5Rt8Yu2Io0Pa"
API = "http://telegram.messenger.test"
SETTINGS = {"token": BOT_TOKEN, "api_url": API, "secret_token": SECRET_TOKEN}
HOOK = "/hooks/telegram/main"
CAP = 64 * 1024


def make_fake(http: httpx.AsyncClient) -> FakeTelegram:
    return FakeTelegram(token=BOT_TOKEN, http=http, delivery_backoff=0.01)


async def test_the_secret_token_header_is_decided_by_compare_digest(make_adapter: Callable[..., Rig]) -> None:
    rig = make_adapter(secret_token=SECRET_TOKEN)
    right = WebhookRequest(method="POST", headers=httpx.Headers({SECRET_TOKEN_HEADER: SECRET_TOKEN}), body=b"{}")
    wrong = WebhookRequest(method="POST", headers=httpx.Headers({SECRET_TOKEN_HEADER: "guessed"}), body=b"{}")
    with pytest.raises(SignatureError):
        await rig.adapter.verify(wrong)
    with security.digest_verdict(True) as calls:
        assert await rig.adapter.verify(wrong) is None
    assert calls
    with security.digest_verdict(False), pytest.raises(SignatureError):
        await rig.adapter.verify(right)


async def test_the_fake_bot_api_checks_its_token_with_compare_digest() -> None:
    fake = FakeTelegram(token=BOT_TOKEN)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=fake), base_url=API) as http:
        assert (await http.post("/botguessed:token/getMe")).status_code == 401
        with security.digest_verdict(True) as calls:
            assert (await http.post("/botguessed:token/getMe")).status_code == 200
        assert calls


async def test_webhooks_over_the_cap_are_refused_while_streaming(tmp_path: Path) -> None:
    config = {"server": {"public_url": "http://amoconnect", "max_messenger_body_bytes": CAP}}
    async with connector("amoconnect_telegram.plugin", make_fake=make_fake, settings=SETTINGS, config=config) as rig:
        rig.runtime.relay.concurrency = 0
        await security.check_body_cap(
            rig.client, HOOK, CAP, rig.runtime.store, headers={SECRET_TOKEN_HEADER: SECRET_TOKEN}
        )
        for wrong in ({}, {SECRET_TOKEN_HEADER: "guessed"}, {SECRET_TOKEN_HEADER: SECRET_TOKEN[:-1]}):
            await security.check_refused_unread(rig.client, HOOK, rig.runtime.store, headers=wrong)


def test_webhooks_survive_fuzzing(tmp_path: Path) -> None:
    sample = {
        "update_id": 10,
        "message": {
            "message_id": 5,
            "date": 1700000000,
            "chat": {"id": 42, "type": "private", "first_name": "Anna"},
            "from": {"id": 42, "is_bot": False, "first_name": "Anna", "username": "anna"},
            "text": "Hello",
            "photo": [{"file_id": "f1", "file_unique_id": "u1", "width": 1, "height": 1, "file_size": 10}],
            "reply_to_message": {"message_id": 4, "date": 1700000000, "chat": {"id": 42, "type": "private"}},
        },
        "edited_message": {"message_id": 5, "date": 1, "chat": {"id": 42, "type": "private"}, "text": "x"},
        "callback_query": {"id": "q", "from": {"id": 42, "is_bot": False, "first_name": "A"}, "data": "d"},
        "message_reaction": {"chat": {"id": 42, "type": "private"}, "message_id": 5, "date": 1, "new_reaction": []},
        "my_chat_member": {"chat": {"id": 42, "type": "private"}, "new_chat_member": {"status": "kicked"}},
    }
    seen: collections.Counter[int] = collections.Counter()
    rig_cm = connector("amoconnect_telegram.plugin", make_fake=make_fake, settings=SETTINGS, workdir=tmp_path)
    with running(rig_cm) as (rig, portal):
        rig.runtime.relay.concurrency = 0

        @FUZZ
        @example(body=json.dumps({"update_id": 1, "message": sample["message"]}).encode(), secret=SECRET_TOKEN)
        @example(body=b'{"update_id": 1, "message": ' + b"[" * 1000 + b"]" * 1000 + b"}", secret=SECRET_TOKEN)
        @example(body=b'{"update_id": 1, "message": {"text": "\xff"}}', secret=SECRET_TOKEN)
        @given(body=webhook_bodies(sample), secret=st.one_of(st.just(SECRET_TOKEN), header_values()))
        def fuzz(body: bytes, secret: str) -> None:
            headers = {SECRET_TOKEN_HEADER: secret, "Content-Type": "application/json"}
            seen[check_webhook(portal, rig.runtime, "POST", HOOK, body, headers=headers).status_code] += 1

        fuzz()
    assert seen[200] and seen[400] and seen[401], seen


async def test_no_secret_reaches_a_log_line_an_answer_or_amocrm(tmp_path: Path) -> None:
    options, redacted = security.secret_rig("telegram", SETTINGS, tmp_path)
    secrets = [*security.CORE_SECRETS, BOT_TOKEN, SECRET_TOKEN]
    with security.captured_logs(redacted) as logs:
        async with connector("amoconnect_telegram.plugin", make_fake=make_fake, **options) as rig:
            recorder = security.ResponseRecorder.record(rig.runtime)
            fake: FakeTelegram = rig.fake
            client = fake.add_client("Anna")
            await fake.client_writes(client, "Hello")
            await rig.arrived(str(client))
            update = json.dumps(fake.updates[-1]).encode()
            assert (await rig.post_webhook(update, headers={SECRET_TOKEN_HEADER: "wrong"})).status_code == 401
            assert (await rig.post_webhook(b"{", headers={SECRET_TOKEN_HEADER: SECRET_TOKEN})).status_code == 400
            await security.core_failures(rig, str(client), lambda text: fake.client_writes(client, text))
            dead = len(await rig.runtime.store.dead_letters())
            assert rig.router is not None
            rig.router.fail_next(1000)  # getFile and the download fail: their URLs carry the token
            await fake.client_sends(client, "photo", caption="a photo")
            await rig.eventually(lambda: _dead_letters_above(rig, dead))
            rig.router.fail_next(0)
            fake.fail_next(1, 403, method="sendMessage", description="Forbidden: bot was blocked by the user")
            blocked = await rig.manager_writes(str(client), "are you there?")
            await rig.eventually(lambda: rig.amojo.message(blocked.message_id or "").statuses)
            said = await security.everything_said(rig, recorder, logs)
    assert security.leaks(said, secrets) == []
    assert sum("no answer from" in line for line in said) >= 2  # the failures were logged, the URLs scrubbed


async def _dead_letters_above(rig: ConnectorRig, count: int) -> bool:
    return len(await rig.runtime.store.dead_letters()) > count
