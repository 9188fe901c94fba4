"""The shipped test kit: fake-building blocks, the connector rig, the pytest plugin and the suite's driver."""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import msgspec
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from amoconnect.errors import PluginError
from amoconnect.model import Button, ListMessage, ListRow, ListSection, Template, TemplateParam
from amoconnect.sandbox import SandboxMessenger
from amoconnect.testing import conformance, fakes, kit, pytest_plugin
from amoconnect.testing.fake_messenger import FakeChatAdapter
from amoconnect.testing.fakechat_api import FakeChat
from amoconnect.testing.fakes import (
    DRIVER_METHODS,
    ApiError,
    ConformanceMessenger,
    FakeAPI,
    ReceivedMessage,
    ReceivedReaction,
    WebhookSender,
)
from amoconnect.testing.kit import SCOPE, HostRouter, connector, eventually

pytestmark = pytest.mark.anyio

pytest_plugins = ("pytester",)
DOCS = Path(__file__).parent.parent / "docs" / "plugins.md"


# -- FakeAPI -------------------------------------------------------------------------------------


class Echo(msgspec.Struct, forbid_unknown_fields=True):
    text: str
    times: int = 1


class EchoAPI(FakeAPI):
    """A two-method API: ``echo`` (sync) and ``slow`` (async), plus a handler that refuses."""

    def routes(self) -> list[BaseRoute]:
        return [
            self.method("/echo", self._echo, Echo, name="echo"),
            self.method("/slow", self._slow, Echo),
        ]

    def _echo(self, params: Echo) -> str:
        if params.times < 1:
            raise ApiError(400, "times must be positive")
        return params.text * params.times

    async def _slow(self, params: Echo) -> str:
        await anyio.lowlevel.checkpoint()
        return params.text


@pytest.fixture
async def api() -> Any:
    fake = EchoAPI("t0ken")
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=fake.app),
        base_url="http://api.test",
        headers={"Authorization": "Bearer t0ken"},
    ) as client:
        yield fake, client


async def test_fake_api_answers_in_its_envelope(api: Any) -> None:
    fake, client = api
    assert (await client.post("/echo", json={"text": "ab", "times": 2})).json() == {"result": "abab"}
    assert (await client.post("/slow", json={"text": "z"})).json() == {"result": "z"}
    refused = await client.post("/echo", json={"text": "ab", "times": 0})
    assert (refused.status_code, refused.json()) == (400, {"error": {"code": 400, "message": "times must be positive"}})
    assert [(call.endpoint, call.status) for call in fake.calls] == [("echo", 200), ("/slow", 200), ("echo", 400)]
    assert fake.calls[0].params == {"text": "ab", "times": 2}


async def test_fake_api_decodes_strictly_and_checks_the_token(api: Any) -> None:
    _, client = api
    typo = await client.post("/echo", json={"txt": "ab"})
    assert typo.status_code == 400
    assert "unknown field `txt`" in typo.json()["error"]["message"]
    assert (await client.post("/echo", content=b"{")).json()["error"]["message"] == "bad request: the body is not JSON"
    stranger = await client.post("/echo", json={"text": "ab"}, headers={"Authorization": "Bearer nope"})
    assert (stranger.status_code, stranger.json()["error"]["message"]) == (401, "unauthorized")
    assert (await client.get("/nowhere")).json() == {"error": {"code": 404, "message": "not found"}}


async def test_fake_api_injects_faults(api: Any) -> None:
    fake, client = api
    fake.fail_next(2, 429, endpoint="echo", retry_after=3)
    fake.fail_next(1, 503)
    first = await client.post("/echo", json={"text": "a"})
    assert (first.status_code, first.headers["retry-after"]) == (429, "3")
    assert first.json()["error"] == {"code": 429, "message": "too many requests", "retry_after": 3}
    assert (await client.post("/slow", json={"text": "a"})).status_code == 503
    assert (await client.post("/echo", json={"text": "a"})).status_code == 429
    assert (await client.post("/echo", json={"text": "a"})).status_code == 200
    assert fake.next_id("m") == "m1"
    assert fake.next_id() == "2"


# -- WebhookSender -------------------------------------------------------------------------------


class Receiver:
    def __init__(self, answers: list[int]) -> None:
        self.answers = answers
        self.bodies: list[tuple[bytes, str | None]] = []

    async def hook(self, request: Request) -> Response:
        self.bodies.append((await request.body(), request.headers.get("x-sig")))
        return Response(status_code=self.answers.pop(0) if self.answers else 200)


async def test_webhooks_are_signed_retried_and_recorded() -> None:
    receiver = Receiver([500, 502])
    app = Starlette(routes=[Route("/hook", receiver.hook, methods=["POST"])])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as http:
        sender = WebhookSender(http, url="http://connector.test/hook", sign=lambda body: {"X-Sig": str(len(body))})
        sender.backoff = 0.001
        assert await sender.send({"n": 1}) == 200
        assert [d.status for d in sender.deliveries] == [500, 502, 200]
        assert [d.attempt for d in sender.deliveries] == [1, 2, 3]
        assert receiver.bodies[-1] == (b'{"n":1}', "7")
        sender.duplicate_next()
        assert await sender.send(b"raw") == 200
        assert [body for body, _ in receiver.bodies[-2:]] == [b"raw", b"raw"]
        receiver.answers = [500, 500, 500]
        assert await sender.send({"n": 2}) == 500


async def test_webhooks_need_a_url_and_survive_connection_errors() -> None:
    sender = WebhookSender(url=None)
    with pytest.raises(RuntimeError, match="no webhook"):
        await sender.send({})

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    async with httpx.AsyncClient(transport=httpx.MockTransport(refuse)) as http:
        sender = WebhookSender(http, url="http://down.test/", attempts=2, backoff=0.001)
        assert await sender.send({}) is None
        assert [d.status for d in sender.deliveries] == [None, None]


# -- the rig -------------------------------------------------------------------------------------


async def test_eventually_returns_the_value_or_names_the_condition() -> None:
    values = iter([0, "", "ready"])
    assert await eventually(lambda: next(values)) == "ready"

    async def later() -> int:
        return 7

    assert await eventually(later) == 7

    def never() -> bool:
        return False

    with pytest.raises(AssertionError, match=r"condition .*never not met within 0.05 s"):
        await eventually(never, within=0.05)


async def test_host_router_routes_by_host() -> None:
    async def hello(request: Request) -> Response:
        return Response(f"hello from {request.url.hostname}")

    app = Starlette(routes=[Route("/", hello)])
    router = HostRouter({"a.test": app}, default=None)
    async with httpx.AsyncClient(transport=router) as http:
        assert (await http.get("http://a.test/")).text == "hello from a.test"
        with pytest.raises(httpx.ConnectError, match=r"no route to b\.test"):
            await http.get("http://b.test/")


async def test_the_rig_runs_a_plugin_both_ways(tmp_path: Path) -> None:
    async with connector(FakeChatAdapter, workdir=tmp_path) as rig:
        assert isinstance(rig.fake, FakeChat)
        assert rig.fake.webhook_url == "http://amoconnect/hooks/fake/main"  # the adapter registered it
        await rig.fake.client_writes("c1", "Hello")
        (arrived,) = await rig.arrived("c1")
        assert (arrived.text, rig.conversation("c1")) == ("Hello", "main:c1")
        emitted = await rig.manager_writes("c1", "Hi!", reply_to=arrived.id)
        (got,) = await rig.received("c1")
        assert (got.text, got.reply_to) == ("Hi!", await rig.messenger_id(arrived.id))
        assert await rig.messenger_id(emitted.message_id or "") == got.message_id
        await rig.fake.deliver_status("c1", got.message_id, "read")
        (status,) = await rig.statuses(emitted.message_id or "")
        assert status.delivery_status == 2
        assert (await rig.post_webhook(b"{}")).status_code == 401
        assert rig.adapter.name == "fake"
        assert rig.runtime.config.store.path == str(tmp_path / "store.sqlite3")


async def test_the_rig_sends_every_kind_of_manager_message(tmp_path: Path) -> None:
    async with connector("amoconnect.testing.fake_messenger", workdir=tmp_path) as rig:
        await rig.fake.client_writes("c1", "Hello")
        await rig.arrived("c1")
        await rig.manager_sends_media("c1", "file", text="the price list")
        await rig.manager_sends_buttons("c1", "ok?", [[Button(text="Yes"), Button(text="Site", url="https://x.test")]])
        rows = (ListRow(callback_data="r1", title="One"),)
        menu = ListMessage(body="Pick", button="Open", sections=(ListSection(title="S", rows=rows),))
        await rig.manager_sends_list("c1", menu)
        params = (TemplateParam(key="{{name}}", value="Ann"),)
        await rig.manager_sends_template("c1", Template(id="3", content="Hi {{name}}", external_id="hi", params=params))
        got = await rig.received("c1", 4)
        assert (got[0].kind, got[0].text, got[0].media_url) == ("file", "the price list", f"{kit.FILES_URL}/file.pdf")
        assert got[1].buttons == ((Button(text="Yes", callback_data="Yes"), Button(text="Site", url="https://x.test")),)
        assert got[2].list_message == menu
        assert (got[3].template, got[3].template_params) == ("hi", ("Ann",))
        await rig.manager_types("c1")
        await rig.eventually(lambda: rig.fake.received_typing("c1") == 1)
        phone_chat = rig.fake.register_phone("+100")
        first = await rig.manager_writes_first("+100", "We write first")
        assert first.chat_id in rig.amojo.chats
        assert [m.text for m in await rig.received(phone_chat)] == ["We write first"]
        await rig.backdate_client("c1", 3600)
        record = await rig.runtime.store.conversation_by_chat("main", "c1")
        assert record is not None
        assert record.last_client_at is not None
        assert record.last_client_at < 1e10 - 3600
        with pytest.raises(LookupError, match="has not written yet"):
            await rig.backdate_client("nobody", 1)


async def test_the_sample_files_are_served_to_the_messenger(tmp_path: Path) -> None:
    async with connector(FakeChatAdapter, workdir=tmp_path) as rig:
        assert rig.http is not None
        picture = await rig.http.get(f"{kit.FILES_URL}/picture.png")
        assert (picture.content, picture.headers["content-type"]) == kit.SAMPLE_FILES["picture.png"]
        assert (await rig.http.get(f"{kit.FILES_URL}/nothing")).status_code == 404


def test_plugins_are_named_clearly() -> None:
    with pytest.raises(PluginError, match="registers no messenger 'nope'"):
        kit.load_plugin(FakeChatAdapter, "nope")
    empty = ModuleType("empty_plugin")
    with pytest.raises(PluginError, match="registers no messengers: pass messenger="):
        kit.load_plugin(empty)
    _, adapter = kit.load_plugin("amoconnect.testing.fake_messenger")
    assert adapter is FakeChatAdapter


async def test_a_plugin_without_a_fake_needs_settings(tmp_path: Path) -> None:
    class NoFake(FakeChatAdapter):
        name = "nofake"
        sandbox_factory = None

    with pytest.raises(PluginError, match="has no fake"):
        async with connector(NoFake, workdir=tmp_path):
            pass
    settings = {"token": "1:t", "secret": "s", "api_url": "http://nofake.messenger.test"}
    made: list[FakeChat] = []

    def make(http: httpx.AsyncClient) -> FakeChat:
        made.append(FakeChat("1:t", http=http))
        return made[-1]

    async with connector(NoFake, workdir=tmp_path, make_fake=make, settings=settings) as rig:
        assert rig.fake is made[0]
        assert rig.fake.webhook_secret == "s"
        assert rig.scope_id == SCOPE


# -- the driver protocol -------------------------------------------------------------------------


def _members(protocol: type) -> set[str]:
    return {name for name in vars(protocol) if not name.startswith("_")} | set(getattr(protocol, "__annotations__", {}))


def test_the_driver_extends_the_sandbox_protocol_and_lists_what_each_capability_needs() -> None:
    assert _members(SandboxMessenger) <= _members(ConformanceMessenger)
    listed = {name for names in DRIVER_METHODS.values() for name in names}
    assert listed | {"client_types"} == _members(ConformanceMessenger)
    assert isinstance(FakeChat(), ConformanceMessenger)


def test_fakechat_describes_what_it_received() -> None:
    fake = FakeChat()
    assert fake.received("c1") == []
    assert fake.received_reactions("c1") == []
    assert fake.received_typing("c1") == 0
    assert fake.received_comment_replies("p1") == []
    assert ReceivedReaction("1", "") == ReceivedReaction("1", "")
    assert ReceivedMessage(message_id="1").kind == "text"


# -- the pytest plugin ---------------------------------------------------------------------------


def test_the_plugin_provides_anyio_backend_but_a_conftest_wins(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_backend="""
        import pytest

        @pytest.mark.anyio
        async def test_async(anyio_backend):
            assert anyio_backend == "asyncio"

        def test_value(anyio_backend):
            assert anyio_backend == "asyncio"
        """
    )
    result = pytester.runpytest("-v")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*::test_async PASSED*"])  # not parametrized over backends, as anyio's is
    pytester.makeconftest(
        """
        import pytest

        @pytest.fixture
        def anyio_backend():
            return "mine"
        """
    )
    result = pytester.runpytest("-k", "test_value")
    result.assert_outcomes(failed=1, deselected=1)
    result.stdout.fnmatch_lines(["*assert 'mine' == 'asyncio'*"])


def test_the_plugin_fixtures_run_a_connector(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_kit="""
        import httpx
        import pytest

        pytestmark = pytest.mark.anyio

        async def test_fake_amojo_on_a_port(fake_amojo, fake_amojo_url):
            async with httpx.AsyncClient() as client:
                response = await client.post(fake_amojo_url + "/v2/origin/custom/x/connect", json={})
            assert response.status_code in (400, 403, 404)
            assert fake_amojo.requests

        async def test_make_connector(make_connector, fake_amojo, tmp_path):
            async with make_connector("amoconnect.testing.fake_messenger") as rig:
                assert rig.amojo is fake_amojo
                await rig.fake.client_writes("c1", "hi")
                (arrived,) = await rig.arrived("c1")
                assert arrived.text == "hi"
            assert rig.runtime.config.store.path == str(tmp_path / "store.sqlite3")
        """
    )
    pytester.runpytest().assert_outcomes(passed=2)


def test_the_suite_skips_what_is_not_declared_and_says_why(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_plain="""
        from amoconnect.capabilities import Capability, ReactionSet
        from amoconnect.testing.conformance import MessengerConformance
        from amoconnect.testing.fake_messenger import FakeChatAdapter

        class Plain(FakeChatAdapter):
            name = "plain"
            capabilities = frozenset({Capability.media})
            reactions = ReactionSet()

        class TestConformance(MessengerConformance):
            plugin = Plain
        """
    )
    result = pytester.runpytest("-rs")
    outcomes = result.parseoutcomes()
    assert outcomes["passed"] == 6  # text both ways, the two refused requests (at the headers, at the body), media
    result.stdout.fnmatch_lines(["*plain does not declare capability 'reactions'*"])


def test_the_suite_names_what_a_fake_lacks(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_lacking="""
        import pytest
        from amoconnect.capabilities import Capability
        from amoconnect.testing.conformance import MessengerConformance
        from amoconnect.testing.fake_messenger import FakeChatAdapter
        from amoconnect.testing.fakechat_api import FakeChat

        class Reacting(FakeChatAdapter):
            name = "reacting"
            capabilities = frozenset({Capability.reactions})

        class Driver:
            # a driver that forgot received(), client_reacts() and received_reactions()
            def __init__(self, fake):
                self.fake, self.app = fake, fake.app

            def sandbox_settings(self, api_url):
                return self.fake.sandbox_settings(api_url)

            async def sandbox_client_writes(self, chat, text):
                await self.fake.client_writes(chat, text)

            def sandbox_received(self, chat):
                return self.fake.sandbox_received(chat)

            async def client_writes(self, chat, text=""):
                return await self.fake.client_writes(chat, text)

        class TestConformance(MessengerConformance):
            plugin = Reacting

            def make_fake(self, http):
                return Driver(FakeChat(http=http))

            @pytest.mark.anyio
            async def test_only_this(self, rig):
                pass
        """
    )
    result = pytester.runpytest("-k", "test_only_this")
    assert result.parseoutcomes()["errors"] == 1
    result.stdout.fnmatch_lines(["*lacks client_reacts, received, received_reactions, which the conformance*"])


# -- documentation and public names --------------------------------------------------------------


@pytest.mark.parametrize("module", [fakes, kit, conformance, pytest_plugin], ids=lambda module: module.__name__)
def test_all_lists_the_public_names(module: ModuleType) -> None:
    defined = {
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and (inspect.isclass(value) or inspect.isfunction(value))
        and value.__module__ == module.__name__
    }
    assert defined <= set(module.__all__)
    assert all(hasattr(module, name) for name in module.__all__)


def test_the_guide_covers_the_kit_and_links_the_hook_reference() -> None:
    text = DOCS.read_text(encoding="utf-8")
    assert "](hooks.md)" in text
    for name in sorted(_members(ConformanceMessenger)):
        assert f"`{name}" in text, f"docs/plugins.md does not mention the driver member {name}"
    for fixture in ("fake_amojo", "fake_amojo_url", "make_connector", "anyio_backend"):
        assert f"`{fixture}`" in text, f"docs/plugins.md does not mention the fixture {fixture}"
    tests = sorted(name for name in vars(conformance.MessengerConformance) if name.startswith("test_"))
    for name in tests:
        assert re.search(rf"`{name}`", text), f"docs/plugins.md does not list the conformance test {name}"
