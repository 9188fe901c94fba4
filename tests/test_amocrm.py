from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import httpx
import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from amoconnect.amocrm import (
    AmoCRMClient,
    ChatTemplate,
    OAuthApp,
    Source,
    SourcePage,
    SourceService,
    SourceServiceParams,
    TemplateButton,
    Tokens,
    base_url_for,
    validate_external_id,
)
from amoconnect.errors import AmoCRMError, ConfigError
from amoconnect.http import RetryPolicy
from amoconnect.ratelimit import RateLimiter
from amoconnect.testing.fake_amocrm import FakeAmoCRM, ManualClock

pytestmark = pytest.mark.anyio

FAST = RetryPolicy(attempts=3, backoff=0.001, max_backoff=0.002)
MakeClient = Callable[..., AmoCRMClient]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def fake(clock: ManualClock) -> FakeAmoCRM:
    return FakeAmoCRM(clock=clock)


@pytest.fixture
async def http(fake: FakeAmoCRM) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=fake.app), base_url=fake.base_url) as client:
        yield client


@pytest.fixture
def make_client(fake: FakeAmoCRM, http: httpx.AsyncClient, clock: ManualClock) -> MakeClient:
    """A client of the fake whose limiter runs on the fake's manual clock (7 req/s, no real sleeping)."""

    def make(**kwargs: Any) -> AmoCRMClient:
        kwargs.setdefault("tokens", fake.add_long_lived_token())
        kwargs.setdefault("limiter", RateLimiter(7, 1.0, burst=1, clock=clock, sleep=clock.sleep))
        kwargs.setdefault("retry", FAST)
        return AmoCRMClient(fake.base_url, client=http, **kwargs)

    return make


@pytest.fixture
def oauth(fake: FakeAmoCRM) -> OAuthApp:
    return OAuthApp(client_id=fake.client_id, client_secret=fake.client_secret, redirect_uri=fake.redirect_uri)


def whatsapp(number: str, *, waba: bool = True) -> list[SourceService]:
    return [
        SourceService(
            type="whatsapp",
            params=SourceServiceParams(waba=waba, is_supports_list_message=True),
            pages=[SourcePage(id=number, name=f"+{number}", link=f"https://wa.me/{number}")],
        )
    ]


# -- account and users -------------------------------------------------------------------
async def test_account_amojo_id(fake: FakeAmoCRM, make_client: MakeClient) -> None:
    client = make_client()
    assert await client.get_account_amojo_id() == fake.amojo_id
    account = await client.get_account()
    assert (account.id, account.subdomain) == (fake.account["id"], "example")
    (request, _) = fake.requests_to("/api/v4/account")
    assert request.query == "with=amojo_id"


async def test_users_follow_pagination(fake: FakeAmoCRM, make_client: MakeClient) -> None:
    fake.max_page_size = 2
    added = [fake.add_user(f"Manager {i}") for i in range(5)]
    users = await make_client().list_users_amojo_ids()
    assert [(u.id, u.name, u.amojo_id) for u in users] == [(a["id"], a["name"], a["amojo_id"]) for a in added]
    pages = [r.query for r in fake.requests_to("/api/v4/users")]
    assert len(pages) == 3
    assert all("with=amojo_id" in q for q in pages)
    assert [q.rsplit("page=", 1)[1] for q in pages] == ["1", "2", "3"]


async def test_no_users_is_an_empty_list(make_client: MakeClient) -> None:
    assert await make_client().list_users_amojo_ids() == []


# -- sources -----------------------------------------------------------------------------
async def test_sources_crud(fake: FakeAmoCRM, make_client: MakeClient) -> None:
    client = make_client()
    assert await client.list_sources() == []
    created = await client.create_sources(
        [
            Source(
                name="WhatsApp +7 900", external_id="wa 79000000000", default=True, services=whatsapp("79000000000")
            ),
            Source(name="Telegram bot", external_id="tg-bot"),
        ]
    )
    assert all(s.id for s in created)
    assert created[0].services == whatsapp("79000000000")
    assert created[0].pipeline_id == fake.pipeline_id
    sent = fake.requests_to("/api/v4/sources", "POST")[0].json
    assert "id" not in sent[0]
    assert sent[0]["services"][0] == {
        "type": "whatsapp",
        "params": {"waba": True, "is_supports_list_message": True},
        "pages": [{"id": "79000000000", "name": "+79000000000", "link": "https://wa.me/79000000000"}],
    }
    listed = await client.list_sources()
    assert {s.external_id for s in listed} == {"wa 79000000000", "tg-bot"}

    renamed = msgspec.structs.replace(created[1], name="Telegram", default=True)
    (updated,) = await client.update_sources([renamed])
    assert updated.name == "Telegram"
    assert fake.sources[created[1].id or 0]["default"] is True
    assert fake.sources[created[0].id or 0]["default"] is False  # one default per integration

    await client.delete_sources([s.id or 0 for s in created])
    assert fake.sources == {}


async def test_sources_are_chunked_by_50(fake: FakeAmoCRM, make_client: MakeClient) -> None:
    fake.max_sources = None
    client = make_client()
    created = await client.create_sources([Source(name=f"n{i}", external_id=f"ext-{i}") for i in range(120)])
    assert len(created) == 120 == len(fake.sources)
    assert [len(r.json) for r in fake.requests_to("/api/v4/sources", "POST")] == [50, 50, 20]
    await client.update_sources([msgspec.structs.replace(s, name=s.name.upper()) for s in created])
    assert [len(r.json) for r in fake.requests_to("/api/v4/sources", "PATCH")] == [50, 50, 20]
    assert all(s["name"].startswith("N") for s in fake.sources.values())
    await client.delete_sources(s.id or 0 for s in created)
    assert [len(r.json) for r in fake.requests_to("/api/v4/sources", "DELETE")] == [50, 50, 20]
    assert fake.sources == {}


@pytest.mark.parametrize(
    ("sources", "match"),
    [
        ([Source(name="x", external_id="")], "1-40 printable ASCII"),
        ([Source(name="x", external_id="a" * 41)], "1-40 printable ASCII"),
        ([Source(name="x", external_id="номер")], "1-40 printable ASCII"),
        ([Source(name="x", external_id="tab\there")], "1-40 printable ASCII"),
        ([Source(name="x", external_id="new\nline")], "1-40 printable ASCII"),
        ([Source(name=" ", external_id="ok")], "name must not be empty"),
        ([Source(name="a", external_id="same"), Source(name="b", external_id="same")], "appears twice"),
        (
            [Source(name="a", external_id="a", default=True), Source(name="b", external_id="b", default=True)],
            "only one source may be the default",
        ),
        ([Source(name="a", external_id="a", id=5)], "amoCRM assigns ids"),
    ],
)
async def test_sources_are_validated_before_any_request(
    fake: FakeAmoCRM, make_client: MakeClient, sources: list[Source], match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        await make_client().create_sources(sources)
    assert fake.requests == []


async def test_update_needs_ids(fake: FakeAmoCRM, make_client: MakeClient) -> None:
    with pytest.raises(ConfigError, match="needs amoCRM's id"):
        await make_client().update_sources([Source(name="a", external_id="a")])
    assert fake.requests == []


@given(st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=40))
def test_every_printable_ascii_external_id_up_to_40_is_accepted(external_id: str) -> None:
    assert validate_external_id(external_id) == external_id


@given(st.text(min_size=1, max_size=60))
def test_external_id_rule(external_id: str) -> None:
    ok = len(external_id) <= 40 and all(0x20 <= ord(c) <= 0x7E for c in external_id)
    if ok:
        validate_external_id(external_id)
    else:
        with pytest.raises(ConfigError):
            validate_external_id(external_id)


async def test_duplicate_external_id_surfaces_validation_errors(fake: FakeAmoCRM, make_client: MakeClient) -> None:
    client = make_client()
    await client.create_sources([Source(name="a", external_id="dup")])
    with pytest.raises(AmoCRMError) as info:
        await client.create_sources([Source(name="b", external_id="fine"), Source(name="c", external_id="dup")])
    error = info.value
    assert error.status == 400
    assert not error.retryable
    assert "Request validation failed" in str(error)
    assert "request 1: external_id: a source with external_id 'dup' already exists [NotUnique]" in str(error)
    assert error.body["validation-errors"][0]["request_id"] == "1"
    assert len(fake.requests_to("/api/v4/sources", "POST")) == 2  # 400 is not retried


async def test_source_cap_of_the_integration(fake: FakeAmoCRM, make_client: MakeClient) -> None:
    fake.max_sources = 3
    client = make_client()
    await client.create_sources([Source(name=f"n{i}", external_id=f"e{i}") for i in range(3)])
    with pytest.raises(AmoCRMError, match="no more than 3 sources") as info:
        await client.create_sources([Source(name="one more", external_id="e3")])
    assert info.value.status == 400


async def test_fake_refuses_batches_over_50(fake: FakeAmoCRM, http: httpx.AsyncClient) -> None:
    token = fake.add_long_lived_token()
    body = [{"name": f"n{i}", "external_id": f"e{i}"} for i in range(51)]
    response = await http.post("/api/v4/sources", json=body, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    assert "50" in response.json()["detail"]


async def test_deleting_unknown_sources_is_404(make_client: MakeClient) -> None:
    with pytest.raises(AmoCRMError) as info:
        await make_client().delete_sources([424242])
    assert info.value.status == 404


# -- contacts ----------------------------------------------------------------------------
async def test_find_contacts_by_phone_and_email(fake: FakeAmoCRM, make_client: MakeClient) -> None:
    ivan = fake.add_contact("Ivan", phones=["+7 (900) 123-45-67"], emails=["ivan@example.test"])
    fake.add_contact("Maria", phones=["+7 901 000 00 00"])
    client = make_client()
    (by_phone,) = await client.find_contacts("79001234567")
    assert (by_phone.id, by_phone.name, by_phone.phones, by_phone.emails) == (
        ivan,
        "Ivan",
        ["+7 (900) 123-45-67"],
        ["ivan@example.test"],
    )
    (by_email,) = await client.find_contacts("ivan@example.test")
    assert by_email.id == ivan
    assert await client.find_contacts("nobody@example.test") == []
    assert fake.requests[-1].status == 204
    with pytest.raises(ValueError, match="non-empty query"):
        await client.find_contacts("  ")


async def test_link_chats_to_contacts(fake: FakeAmoCRM, make_client: MakeClient) -> None:
    contact = fake.add_contact("Ivan")
    client = make_client()
    (link,) = await client.link_chats_to_contacts([(contact, "8e4d4baa-9e6c-4a88-838a-5f62be227bdc")])
    assert (link.contact_id, link.chat_id) == (contact, "8e4d4baa-9e6c-4a88-838a-5f62be227bdc")
    assert fake.chat_links["8e4d4baa-9e6c-4a88-838a-5f62be227bdc"]["contact_id"] == contact
    with pytest.raises(AmoCRMError, match=r"request 0: contact_id: contact not found") as info:
        await client.link_chats_to_contacts([(999, "chat")])
    assert info.value.status == 400


# -- chat templates ----------------------------------------------------------------------
async def test_templates_and_review_lifecycle(fake: FakeAmoCRM, make_client: MakeClient) -> None:
    client = make_client()
    assert await client.list_templates() == []
    (source,) = await client.create_sources([Source(name="WA", external_id="wa", services=whatsapp("79000000000"))])
    plain, waba = await client.create_templates(
        [
            ChatTemplate(name="Hello", content="Hello, {{contact.name}}!", external_id="t-hello"),
            ChatTemplate(
                name="Order",
                content="Your order {{lead.id}} is ready",
                type="waba",
                waba_category="UTILITY",
                waba_language="en",
                waba_footer="Reply STOP to opt out",
                waba_examples={"{{lead.id}}": "42"},
                buttons=[TemplateButton(type="url", text="Track", url="https://shop.example/track")],
                external_id="t-order",
            ),
        ]
    )
    assert plain.id and waba.id
    assert (waba.type, waba.buttons) == (
        "waba",
        [TemplateButton(type="url", text="Track", url="https://shop.example/track")],
    )

    (review,) = await client.send_template_to_review(waba.id)
    assert (review.source_id, review.status) == (source.id, "review")
    approved = await client.set_review_status(waba.id, review.id, "approved")
    assert approved.status == "approved"
    rejected = await client.set_review_status(waba.id, review.id, "rejected", reject_reason="too salesy")
    assert (rejected.status, rejected.reject_reason) == ("rejected", "too salesy")
    assert fake.templates[waba.id]["reviews"][0]["status"] == "rejected"

    listed = {t.external_id: t for t in await client.list_templates()}
    assert listed["t-order"].reviews and listed["t-order"].reviews[0].status == "rejected"
    only = await client.list_templates(external_ids=["t-hello"])
    assert [t.id for t in only] == [plain.id]

    (changed,) = await client.update_templates([msgspec.structs.replace(listed["t-hello"], content="Hi!")])
    assert changed.content == "Hi!"
    sent = fake.requests_to("/api/v4/chats/templates", "PATCH")[0].json
    assert "reviews" not in sent[0]

    await client.delete_templates([plain.id, waba.id])
    assert fake.templates == {}


async def test_template_errors(fake: FakeAmoCRM, make_client: MakeClient) -> None:
    client = make_client()
    (plain,) = await client.create_templates([ChatTemplate(name="Hi", content="Hi")])
    assert plain.id
    with pytest.raises(AmoCRMError, match="only waba templates") as info:
        await client.send_template_to_review(plain.id)
    assert info.value.status == 400
    with pytest.raises(AmoCRMError, match=r"waba_category: must be one of"):
        await client.create_templates([ChatTemplate(name="W", content="W", type="waba", waba_language="en")])
    before = len(fake.requests)
    with pytest.raises(ValueError, match="review status must be one of"):
        await client.set_review_status(plain.id, 1, "accepted")  # type: ignore[arg-type]  # a wrong status on purpose
    with pytest.raises(ValueError, match="must not carry an id"):
        await client.create_templates([plain])
    assert len(fake.requests) == before


# -- webhooks ----------------------------------------------------------------------------
async def test_subscribe_webhook_and_repeat_updates(fake: FakeAmoCRM, make_client: MakeClient) -> None:
    client = make_client()
    hook = await client.subscribe_webhook("https://connector.example/hooks/amocrm/t0k3n", ["add_chat_template_review"])
    assert hook.settings == ["add_chat_template_review"]
    assert not hook.disabled
    assert fake.requests[-1].status == 201
    again = await client.subscribe_webhook(
        "https://connector.example/hooks/amocrm/t0k3n", ["add_chat_template_review", "add_lead"], sort=5
    )
    assert again.id == hook.id
    assert (again.settings, again.sort) == (["add_chat_template_review", "add_lead"], 5)
    assert len(fake.webhooks) == 1
    with pytest.raises(ValueError, match="list of events"):
        await client.subscribe_webhook("https://x.example", "add_lead")
    with pytest.raises(AmoCRMError, match="destination: This value is not a valid URL"):
        await client.subscribe_webhook("not a url", ["add_lead"])


# -- OAuth -------------------------------------------------------------------------------
async def test_exchange_code_then_use_tokens(fake: FakeAmoCRM, make_client: MakeClient, oauth: OAuthApp) -> None:
    saved: list[Tokens] = []
    client = make_client(tokens=None, oauth=oauth, on_tokens=saved.append)
    with pytest.raises(ConfigError, match="no access token"):
        await client.get_account()
    tokens = await client.exchange_code(fake.issue_code())
    assert saved == [tokens] and client.tokens == tokens
    assert tokens.access_token in fake.access_tokens and tokens.refresh_token in fake.refresh_tokens
    assert tokens.expires_at is not None and tokens.expires_at > fake.wall_clock() + 3600
    sent = fake.requests_to("/oauth2/access_token")[0]
    assert sent.json["grant_type"] == "authorization_code" and sent.json["client_secret"] == fake.client_secret
    assert sent.token is None
    assert await client.get_account_amojo_id() == fake.amojo_id
    assert fake.requests[-1].token == tokens.access_token


async def test_code_is_single_use_and_wrong_secret_is_refused(
    fake: FakeAmoCRM, make_client: MakeClient, oauth: OAuthApp
) -> None:
    code = fake.issue_code()
    await make_client(tokens=None, oauth=oauth).exchange_code(code)
    with pytest.raises(AmoCRMError, match="Authorization code has expired or been used") as info:
        await make_client(tokens=None, oauth=oauth).exchange_code(code)
    assert info.value.status == 400
    wrong = msgspec.structs.replace(oauth, client_secret="nope")
    with pytest.raises(AmoCRMError, match=r"Invalid client.*Client authentication failed.*client_secret") as info:
        await make_client(tokens=None, oauth=wrong).exchange_code(fake.issue_code())
    assert info.value.body["type"].endswith("OAuthProblemJson")
    with pytest.raises(ConfigError, match="OAuth credentials"):
        await make_client(tokens=None).exchange_code(fake.issue_code())


async def test_expired_token_is_refreshed_before_the_request(
    fake: FakeAmoCRM, make_client: MakeClient, oauth: OAuthApp
) -> None:
    old = fake.issue_tokens(ttl=-10)
    saved: list[Tokens] = []

    async def persist(tokens: Tokens) -> None:
        await anyio.lowlevel.checkpoint()
        saved.append(tokens)

    client = make_client(tokens=old, oauth=oauth, on_tokens=persist)
    assert await client.get_account_amojo_id() == fake.amojo_id
    assert fake.grants == ["refresh_token"]
    assert [r.status for r in fake.requests] == [200, 200]  # the refresh, then the call: no 401
    assert saved == [client.tokens] and saved[0].access_token != old.access_token
    assert old.refresh_token not in fake.refresh_tokens  # rotated
    with pytest.raises(AmoCRMError, match="Token has been revoked") as info:
        await make_client(tokens=old, oauth=oauth).refresh()
    assert info.value.status == 401  # a used refresh token, as amoCRM answers it


async def test_401_refreshes_once_and_retries(fake: FakeAmoCRM, make_client: MakeClient, oauth: OAuthApp) -> None:
    saved: list[Tokens] = []
    client = make_client(tokens=fake.issue_tokens(), oauth=oauth, on_tokens=saved.append)
    fake.expire_access_tokens()
    assert await client.get_account_amojo_id() == fake.amojo_id
    assert [r.status for r in fake.requests] == [401, 200, 200]
    assert fake.grants == ["refresh_token"] and len(saved) == 1


async def test_401_after_refresh_is_an_error(fake: FakeAmoCRM, make_client: MakeClient, oauth: OAuthApp) -> None:
    client = make_client(tokens=fake.issue_tokens(), oauth=oauth)
    fake.fail_next(5, 401, path="/api/")
    with pytest.raises(AmoCRMError, match="token was refused") as info:
        await client.get_account()
    assert info.value.status == 401
    assert fake.grants == ["refresh_token"]
    assert [r.path for r in fake.requests] == ["/api/v4/account", "/oauth2/access_token", "/api/v4/account"]


async def test_long_lived_token_refused_is_an_error_without_refresh(fake: FakeAmoCRM, make_client: MakeClient) -> None:
    client = make_client(tokens="revoked-token")
    with pytest.raises(AmoCRMError, match="Invalid access token") as info:
        await client.get_account()
    assert info.value.status == 401
    assert fake.grants == []


async def test_concurrent_401s_refresh_once(fake: FakeAmoCRM, make_client: MakeClient, oauth: OAuthApp) -> None:
    client = make_client(tokens=fake.issue_tokens(), oauth=oauth)
    fake.expire_access_tokens()
    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(client.get_account)
    assert fake.grants == ["refresh_token"]


# -- retries, errors and the rate limit --------------------------------------------------
async def test_5xx_is_retried_then_succeeds(fake: FakeAmoCRM, make_client: MakeClient) -> None:
    fake.fail_next(2, 503)
    assert await make_client().get_account_amojo_id() == fake.amojo_id
    assert [r.status for r in fake.requests] == [503, 503, 200]


async def test_429_storm_is_bounded(fake: FakeAmoCRM, make_client: MakeClient, clock: ManualClock) -> None:
    fake.fail_next(1000, 429)
    client = make_client()
    with pytest.raises(AmoCRMError, match="failed after 3 attempts: HTTP 429") as info:
        await client.list_sources()
    assert info.value.status == 429 and info.value.retryable
    assert len(fake.requests) == 3
    # the account was pushed back: later requests wait at least the last backoff
    assert await client.limiter.wait_time(client.limit_key) > 0


async def test_ip_ban_is_403_and_not_retried(fake: FakeAmoCRM, make_client: MakeClient) -> None:
    fake.ban_after = 2
    fake.fail_next(2, 429)
    client = make_client(retry=RetryPolicy(attempts=2, backoff=0.001))
    with pytest.raises(AmoCRMError):
        await client.get_account()
    assert fake.banned
    with pytest.raises(AmoCRMError, match="blocked this IP") as info:
        await client.get_account()
    assert info.value.status == 403
    assert fake.requests[-1].status == 403 and len(fake.requests) == 3
    fake.unban()
    assert await client.get_account_amojo_id() == fake.amojo_id


async def test_unexpected_bodies_are_amocrm_errors(fake: FakeAmoCRM, make_client: MakeClient) -> None:
    client = make_client()
    fake.fail_next(1, 200, body=b"<html>oops</html>")
    with pytest.raises(AmoCRMError, match="not JSON"):
        await client.get_account()
    fake.fail_next(1, 200, body=b'{"_embedded": {"users": [{"name": "no id"}]}}')
    with pytest.raises(AmoCRMError, match="unexpected shape"):
        await client.list_users_amojo_ids()
    fake.fail_next(1, 418, body=b"teapot")
    with pytest.raises(AmoCRMError, match="HTTP 418: teapot") as info:
        await client.get_account()
    assert info.value.body == "teapot"


async def test_the_limiter_keeps_the_client_under_the_fake_limit(
    fake: FakeAmoCRM, make_client: MakeClient, clock: ManualClock
) -> None:
    client = make_client()
    start = clock.now
    async with anyio.create_task_group() as tg:
        for _ in range(40):
            tg.start_soon(client.get_account)
    assert fake.rate_limited == 0
    assert len(fake.requests) == 40
    assert clock.now - start >= 39 / 7 - 1e-6


async def test_without_the_limiter_the_fake_answers_429(fake: FakeAmoCRM, make_client: MakeClient) -> None:
    client = make_client(limiter=RateLimiter(10_000), retry=RetryPolicy(attempts=1))
    errors: list[int | None] = []

    async def call() -> None:
        try:
            await client.get_account()
        except AmoCRMError as exc:
            errors.append(exc.status)

    async with anyio.create_task_group() as tg:
        for _ in range(20):
            tg.start_soon(call)
    assert fake.rate_limited == len(errors) == 13
    assert set(errors) == {429}


# -- construction and the fake's own checks ----------------------------------------------
async def test_construction(fake: FakeAmoCRM) -> None:
    assert base_url_for("MyCompany") == "https://mycompany.amocrm.ru"
    assert base_url_for("acme", "kommo.com") == "https://acme.kommo.com"
    for bad in ("", "a.b", "-x", "acme/evil"):
        with pytest.raises(ConfigError, match="subdomain"):
            base_url_for(bad)
    with pytest.raises(ConfigError, match="domain"):
        base_url_for("acme", "https://kommo.com")
    with pytest.raises(ConfigError, match="base URL"):
        AmoCRMClient("acme.amocrm.ru")
    async with AmoCRMClient.for_subdomain("acme", "amocrm.com", tokens="t") as client:
        assert client.base_url == "https://acme.amocrm.com"
        assert client.limiter.rate == 7 and client.limiter.burst == 1


async def test_fake_auth_and_bad_json(fake: FakeAmoCRM, http: httpx.AsyncClient) -> None:
    missing = await http.get("/api/v4/account")
    assert missing.status_code == 401
    assert missing.headers["content-type"] == "application/problem+json"
    assert missing.json()["title"] == "Unauthorized"
    token = fake.add_long_lived_token()
    broken = await http.post(
        "/api/v4/sources",
        content=b"[{",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    assert (broken.status_code, broken.json()["detail"]) == (400, "Request body is not valid JSON")
    form = await http.post(
        "/oauth2/access_token",
        data={
            "client_id": fake.client_id,
            "client_secret": fake.client_secret,
            "redirect_uri": fake.redirect_uri,
            "grant_type": "authorization_code",
            "code": fake.issue_code(),
        },
    )
    assert form.status_code == 200 and form.json()["token_type"] == "Bearer"
