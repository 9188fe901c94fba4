"""The SSRF guard on media downloads: schemes, addresses, pinning, redirects, the size cap."""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator, Callable, Sequence

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import PlainTextResponse

from amoconnect.config import parse_config
from amoconnect.errors import ConfigError, MessengerError, UnsafeURL
from amoconnect.http import new_client
from amoconnect.media import MediaTooLarge, download, fetch_url
from amoconnect.model import Attachment
from amoconnect.testing.kit import loopback_resolver
from amoconnect.testing.servers import serve_app
from amoconnect.urlguard import UrlGuard, parse_networks, refusal

pytestmark = pytest.mark.anyio

PUBLIC_V4 = "93.184.216.34"
PUBLIC_V6 = "2606:2800:220:1:248:1893:25c8:1946"


class Resolver:
    """DNS for the tests: name → the addresses of each successive lookup (the last one repeats)."""

    def __init__(self, answers: dict[str, Sequence[Sequence[str]]]) -> None:
        self.answers = answers
        self.lookups: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.lookups.append(host)
        if host.replace(".", "").isdigit() or ":" in host:
            return [host]  # an address resolves to itself, as with getaddrinfo
        if host not in self.answers:
            raise OSError(-2, "Name or service not known")
        answers = self.answers[host]
        return list(answers[min(self.lookups.count(host), len(answers)) - 1])


def world(handler: Callable[[httpx.Request], httpx.Response]) -> tuple[httpx.AsyncClient, list[httpx.Request]]:
    """An HTTP client whose 'network' is ``handler``; every request that went out is recorded."""
    sent: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return handler(request)

    return httpx.AsyncClient(transport=httpx.MockTransport(record)), sent


def ok(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, content=b"PNG bytes", headers={"content-type": "image/png; charset=binary"})


# -- which addresses ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("fc00::1", "private"),
        ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"),
        ("fe80::1%eth0", "link-local"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("100.64.0.1", "shared (CGNAT)"),
        ("100.127.255.254", "shared (CGNAT)"),
        ("169.254.169.254", "cloud metadata"),
        ("fd00:ec2::254", "cloud metadata"),
        ("::ffff:169.254.169.254", "cloud metadata"),
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped
        ("::ffff:100.64.0.1", "CGNAT"),
        ("2002:7f00:1::", "loopback"),  # 6to4 of 127.0.0.1
        ("64:ff9b::a00:1", "private"),  # NAT64 of 10.0.0.1
    ],
)
def test_non_public_addresses_are_refused(address: str, kind: str) -> None:
    why = refusal(address)
    assert why is not None and kind in why


@pytest.mark.parametrize("address", [PUBLIC_V4, "8.8.8.8", PUBLIC_V6, "::ffff:93.184.216.34", "64:ff9b::808:808"])
def test_public_addresses_pass(address: str) -> None:
    assert refusal(address) is None


def test_allowed_networks_pass_but_metadata_never_does() -> None:
    allow = parse_networks(["10.0.0.0/8", "127.0.0.1", "::1/128"])
    assert refusal("10.9.8.7", allow) is None
    assert refusal("::ffff:10.9.8.7", allow) is None
    assert refusal("127.0.0.1", allow) is None
    assert refusal("127.0.0.2", allow) is not None
    everything = parse_networks(["0.0.0.0/0", "::/0"])
    assert refusal("192.168.0.1", everything) is None
    assert "metadata" in (refusal("169.254.169.254", everything) or "")
    assert "metadata" in (refusal("fd00:ec2::254", everything) or "")


def test_the_config_key_is_validated_and_documented() -> None:
    base = {"channel": {"id": "c", "secret": "s"}}
    assert parse_config(base).http.media_allow_networks == []
    assert parse_config({**base, "http": {"media_allow_networks": ["10.0.0.0/8"]}}).http.media_allow_networks
    with pytest.raises(ConfigError, match=r"http.media_allow_networks\[1\] 'ten' is not a network"):
        parse_config({**base, "http": {"media_allow_networks": ["10.0.0.0/8", "ten"]}})
    from pathlib import Path

    root = Path(__file__).parent.parent
    for doc in ("README.md", "docs/amoconnect.example.toml"):
        assert "media_allow_networks" in (root / doc).read_text(), doc


# -- what is fetched --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url", ["ftp://files.example/a.png", "file:///etc/passwd", "gopher://files.example/", "data:text/plain,hi"]
)
async def test_only_http_and_https_are_fetched(url: str) -> None:
    http, sent = world(ok)
    with pytest.raises(UnsafeURL, match="not http"):
        await fetch_url(http, url, max_bytes=100)
    assert sent == []


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/secret",
        "http://[::1]:8080/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:169.254.169.254]/latest/meta-data/",
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://2130706433/",  # 127.0.0.1 written as one number: the resolver says what it is
        "http://0x7f.1/",
        "http://localhost/",
    ],
)
async def test_the_strict_default_refuses_the_connectors_own_network(url: str) -> None:
    http, sent = world(ok)
    with pytest.raises(UnsafeURL, match="the connector does not fetch from there"):
        await fetch_url(http, url, max_bytes=100)  # no guard given: the strict one, with the system's DNS
    assert sent == []


async def test_a_name_with_any_private_address_is_refused() -> None:
    resolver = Resolver({"cdn.example": [[PUBLIC_V4, "10.0.0.5"]]})
    http, sent = world(ok)
    with pytest.raises(UnsafeURL, match=r"http://cdn.example resolves to 10.0.0.5, a private address"):
        await fetch_url(http, "http://cdn.example/a.png", max_bytes=100, guard=UrlGuard(resolver=resolver))
    assert sent == []


async def test_the_request_goes_to_the_checked_address_with_the_names_host_and_tls_name() -> None:
    resolver = Resolver({"cdn.example": [[PUBLIC_V4]], "v6.example": [[PUBLIC_V6]]})
    http, sent = world(ok)
    guard = UrlGuard(resolver=resolver)
    got = await fetch_url(http, "https://cdn.example:8443/pics/cat.png?sig=abc", max_bytes=100, guard=guard)
    assert (got.content, got.content_type, got.file_name) == (b"PNG bytes", "image/png", "cat.png")
    (request,) = sent
    assert str(request.url) == f"https://{PUBLIC_V4}:8443/pics/cat.png?sig=abc"
    assert request.headers["host"] == "cdn.example:8443"
    assert request.extensions["sni_hostname"] == "cdn.example"
    await fetch_url(http, "http://v6.example/a", max_bytes=100, guard=guard)
    assert sent[1].url.host == PUBLIC_V6 and sent[1].headers["host"] == "v6.example"
    assert "sni_hostname" not in sent[1].extensions


async def test_dns_rebinding_after_the_check_does_not_reach_inside() -> None:
    # The first lookup is public, every later one says metadata: the name is looked up once per hop.
    resolver = Resolver({"rebind.example": [[PUBLIC_V4], ["169.254.169.254"]]})
    http, sent = world(ok)
    await fetch_url(http, "http://rebind.example/a.png", max_bytes=100, guard=UrlGuard(resolver=resolver))
    assert resolver.lookups == ["rebind.example"]
    assert [r.url.host for r in sent] == [PUBLIC_V4]


def redirecting(chain: dict[str, str]) -> Callable[[httpx.Request], httpx.Response]:
    def handler(request: httpx.Request) -> httpx.Response:
        target = chain.get(f"{request.headers['host']}{request.url.path}")
        return httpx.Response(302, headers={"location": target}) if target else ok(request)

    return handler


async def test_redirects_are_followed_by_hand_and_each_hop_is_checked() -> None:
    resolver = Resolver({"a.example": [[PUBLIC_V4]], "b.example": [["8.8.8.8"]]})
    chain = {"a.example/start": "http://b.example/next", "b.example/next": "/final.png"}
    http, sent = world(redirecting(chain))
    got = await fetch_url(http, "http://a.example/start", max_bytes=100, guard=UrlGuard(resolver=resolver))
    assert got.file_name == "final.png"
    assert [(r.url.host, r.headers["host"], r.url.path) for r in sent] == [
        (PUBLIC_V4, "a.example", "/start"),
        ("8.8.8.8", "b.example", "/next"),
        ("8.8.8.8", "b.example", "/final.png"),
    ]
    assert resolver.lookups == ["a.example", "b.example", "b.example"]


@pytest.mark.parametrize(
    ("location", "error"),
    [
        ("http://169.254.169.254/latest/meta-data/iam/", "cloud metadata"),
        ("http://inside.example/admin", "10.0.0.1, a private address"),
        ("file:///etc/passwd", "not http"),
    ],
)
async def test_a_redirect_inside_is_refused(location: str, error: str) -> None:
    resolver = Resolver({"a.example": [[PUBLIC_V4]], "inside.example": [["10.0.0.1"]]})
    http, sent = world(redirecting({"a.example/start": location}))
    with pytest.raises(UnsafeURL, match=error):
        await fetch_url(http, "http://a.example/start", max_bytes=100, guard=UrlGuard(resolver=resolver))
    assert len(sent) == 1


async def test_a_redirect_loop_stops() -> None:
    resolver = Resolver({"a.example": [[PUBLIC_V4]]})
    http, sent = world(redirecting({"a.example/loop": "/loop"}))
    with pytest.raises(UnsafeURL, match="redirected more than 3 times"):
        await fetch_url(http, "http://a.example/loop", max_bytes=100, guard=UrlGuard(resolver=resolver))
    assert len(sent) == 4


async def test_the_size_cap_is_read_streaming() -> None:
    yielded = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal yielded
        while True:
            yielded += 1
            yield b"x" * 1024

    guard = UrlGuard(resolver=Resolver({"big.example": [[PUBLIC_V4]]}))
    http, _ = world(lambda request: httpx.Response(200, content=endless()))  # chunked: no Content-Length
    with pytest.raises(MediaTooLarge, match="over the 10000 byte cap"):
        await fetch_url(http, "http://big.example/f", max_bytes=10_000, guard=guard)
    assert yielded <= 11
    http, _ = world(lambda request: httpx.Response(200, headers={"content-length": "10001"}, content=endless()))
    with pytest.raises(MediaTooLarge, match="10001 bytes"):
        await fetch_url(http, "http://big.example/f", max_bytes=10_000, guard=guard)


async def test_download_reports_refusals_and_failures_readably() -> None:
    guard = UrlGuard(resolver=Resolver({"files.example": [[PUBLIC_V4]]}))
    http, _ = world(lambda request: httpx.Response(200, content=b"x" * 2_000_000))
    picture = Attachment(kind="picture", url="http://files.example/big.png")
    with pytest.raises(MessengerError, match="the picture is larger than the 1 MB Telegram accepts") as too_big:
        await download(http, picture, max_bytes=2**20, messenger="Telegram", guard=guard)
    assert not too_big.value.retryable
    inside = Attachment(kind="file", url="http://169.254.169.254/latest/meta-data/")
    with pytest.raises(UnsafeURL) as refused:
        await download(http, inside, max_bytes=2**20, messenger="Telegram", guard=guard)
    assert not refused.value.retryable and "metadata" in refused.value.description
    gone = Attachment(kind="file", url="http://nowhere.example/f.pdf?token=s3cr3t")
    with pytest.raises(MessengerError, match=r"http://nowhere\.example does not resolve") as unresolved:
        await download(http, gone, max_bytes=2**20, messenger="Telegram", guard=guard)
    assert unresolved.value.retryable and "s3cr3t" not in str(unresolved.value)


# -- over real sockets -----------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["httpx", "aiohttp"])
async def test_both_transports_connect_to_the_pinned_address(transport: str) -> None:
    seen: list[tuple[str, str]] = []

    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        request = Request(scope, receive)
        seen.append((request.headers["host"], request.url.path))
        await PlainTextResponse("file bytes")(scope, receive, send)

    async with serve_app(app) as base:
        port = httpx.URL(base).port
        # media.invalid resolves nowhere but in this guard: an answer proves the checked address was used.
        resolver = Resolver({"media.invalid": [["127.0.0.1"]]})
        guard = UrlGuard(parse_networks(["127.0.0.0/8"]), resolver=resolver)
        async with new_client(transport=transport) as http:  # type: ignore[arg-type]
            got = await fetch_url(http, f"http://media.invalid:{port}/doc.txt", max_bytes=100, guard=guard)
            assert got.content == b"file bytes" and got.content_type == "text/plain"
            assert seen == [(f"media.invalid:{port}", "/doc.txt")]
            with pytest.raises(UnsafeURL, match="loopback"):
                await fetch_url(http, f"http://127.0.0.1:{port}/doc.txt", max_bytes=100)
    assert len(seen) == 1


async def test_the_rig_resolves_names_to_loopback_and_addresses_to_themselves() -> None:
    assert await loopback_resolver("files.amocrm.test", 80) == ["127.0.0.1"]
    assert await loopback_resolver("169.254.169.254", 80) == ["169.254.169.254"]
    assert ipaddress.ip_address((await loopback_resolver("::1", 80))[0]).is_loopback
