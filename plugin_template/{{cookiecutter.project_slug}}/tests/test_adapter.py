{% set c = cookiecutter %}
{% set P = c.__class_prefix %}
"""The adapter against its fake, piece by piece (signatures, parsing, errors), and through a running connector."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager

import httpx
import pytest
import structlog
from amoconnect import (
    AdapterContext,
    InboundEvent,
    MessengerError,
    OutgoingMessage,
    RateLimited,
    SignatureError,
    WebhookError,
    WebhookRequest,
)
from amoconnect.adapter import validate_adapter
from amoconnect.testing.kit import ConnectorRig

from {{ c.package_name }}.adapter import (
    SIGNATURE_HEADER,
    signature_of,
)
from {{ c.package_name }}.adapter import (
    {{ P }}Adapter as Adapter,
)
from {{ c.package_name }}.adapter import (
    {{ P }}Settings as Settings,
)
from {{ c.package_name }}.fake import (
    {{ P }}Fake as Fake,
)

pytestmark = pytest.mark.anyio

SECRET = "webhook-secret"
Connect = Callable[..., AbstractAsyncContextManager[ConnectorRig]]


class MemoryState:
    """The adapter's key-value store, in memory."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    async def get(self, key: str) -> bytes | None:
        return self.data.get(key)

    async def set(self, key: str, value: bytes) -> None:
        self.data[key] = value

    async def delete(self, key: str) -> None:
        self.data.pop(key, None)


async def _ignore(events: Sequence[InboundEvent]) -> None:
    return None


@pytest.fixture
def fake() -> Fake:
    return Fake()


@pytest.fixture
async def adapter(fake: Fake) -> AsyncIterator[Adapter]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=fake.app)) as http:
        context = AdapterContext(
            instance="main", http=http, log=structlog.get_logger(), state=MemoryState(), submit=_ignore
        )
        settings = Settings(token=fake.token, secret=SECRET, api_url="http://api.test")
        yield Adapter(settings, context)


def _request(body: bytes, **headers: str) -> WebhookRequest:
    return WebhookRequest(method="POST", body=body, headers=httpx.Headers(headers))


def test_the_declarations_match_the_code() -> None:
    validate_adapter(Adapter)


async def test_only_signed_webhooks_pass(adapter: Adapter) -> None:
    body = b'{"event_id": "e1", "type": "message"}'
    assert await adapter.verify(_request(body, **{SIGNATURE_HEADER: signature_of(body, SECRET)})) is None
    for headers in ({}, {SIGNATURE_HEADER: signature_of(body, "another secret")}):
        with pytest.raises(SignatureError):
            await adapter.verify(_request(body, **headers))


async def test_unknown_event_kinds_are_ignored_and_malformed_ones_refused(adapter: Adapter) -> None:
    assert await adapter.parse(_request(b'{"event_id": "e1", "type": "poll_vote"}')) == []
    for body in (b"{", b'{"event_id": "e2", "type": "message", "text": "no chat"}'):
        with pytest.raises(WebhookError):
            await adapter.parse(_request(body))


@pytest.mark.parametrize(
    ("status", "reason", "retryable"),
    [(403, "blocked", False), (404, "no_chat", False), (400, "other", False), (500, "other", True)],
)
async def test_api_errors_become_reasons(
    adapter: Adapter, fake: Fake, status: int, reason: str, retryable: bool
) -> None:
    fake.join("1001")
    fake.fail_next(1, status, endpoint="messages/send")
    with pytest.raises(MessengerError) as caught:
        await adapter.send_message(OutgoingMessage(chat="1001", text="Hello"))
    assert (caught.value.reason, caught.value.retryable) == (reason, retryable)


async def test_rate_limits_say_how_long_to_wait(adapter: Adapter, fake: Fake) -> None:
    fake.join("1001")
    fake.fail_next(1, 429, retry_after=3)
    with pytest.raises(RateLimited) as caught:
        await adapter.send_message(OutgoingMessage(chat="1001", text="Hello"))
    assert caught.value.retry_after == 3


async def test_a_refused_token_is_named(adapter: Adapter, fake: Fake) -> None:
    fake.token = "another token"
    with pytest.raises(MessengerError, match="check the instance's token"):
        await adapter.send_message(OutgoingMessage(chat="1001", text="Hello"))


async def test_a_failed_send_is_retried(make_connector: Connect) -> None:
    async with make_connector("{{ c.package_name }}.plugin") as rig:
        await rig.fake.client_writes("1001", "Hello")
        await rig.arrived("1001")
        rig.fake.fail_next(1, 503, endpoint="messages/send")
        await rig.manager_writes("1001", "Hi! How can we help?")
        (got,) = await rig.received("1001")
        assert got.text == "Hi! How can we help?"


async def test_a_blocked_client_is_reported_to_the_manager(make_connector: Connect) -> None:
    async with make_connector("{{ c.package_name }}.plugin") as rig:
        await rig.fake.client_writes("1001", "Hello")
        await rig.arrived("1001")
        rig.fake.block("1001")
        emitted = await rig.manager_writes("1001", "Are you there?")
        (status,) = await rig.statuses(emitted.message_id or "")
        assert (status.delivery_status, status.error_code) == (-1, 901)


async def test_startup_registers_the_webhook_and_reports_how_updates_arrive(fake: Fake) -> None:
    reported: list[str] = []
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=fake.app)) as http:
        for public_url in ("https://connector.test/hooks/{{ c.messenger_slug }}/main", None):
            context = AdapterContext(
                instance="main",
                http=http,
                log=structlog.get_logger(),
                state=MemoryState(),
                submit=_ignore,
                public_url=public_url,
                intake=reported.append,
            )
            await Adapter(Settings(token=fake.token, secret=SECRET, api_url="http://api.test"), context).startup()
    assert reported == ["webhook", "not_registered"]
    assert fake.webhooks.url == "https://connector.test/hooks/{{ c.messenger_slug }}/main"
