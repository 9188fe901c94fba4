from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import msgspec
import pluggy
import pytest
import structlog
from structlog.testing import capture_logs

from amoconnect import hookspecs, plugins
from amoconnect.adapter import (
    AdapterContext,
    MessengerAdapter,
    Route,
    WebhookRequest,
    WebhookResponse,
    validate_adapter,
)
from amoconnect.capabilities import Capability, RateLimit, ReactionSet
from amoconnect.errors import PluginError, SignatureError
from amoconnect.hookspecs import RegisterMessenger, hookimpl
from amoconnect.model import (
    Conversation,
    InboundEvent,
    InboundMessage,
    OutgoingCommentReply,
    OutgoingMessage,
    OutgoingReaction,
    OutgoingTyping,
    Person,
    SendResult,
)
from amoconnect.plugins import (
    TRACE_ENV,
    alter_inbound_message,
    alter_outgoing_message,
    collect_messengers,
    describe_plugins,
    get_plugin_manager,
)
from amoconnect.testing.fakes import MemoryState

PLUGINS = Path(__file__).parent / "plugins"
DOCS = Path(__file__).parent.parent / "docs" / "hooks.md"
CONVERSATION = Conversation(id="c1", messenger="echo", instance="main", chat="100")


# -- tiny plugins ----------------------------------------------------------------------------------


class Settings(msgspec.Struct):
    token: str = ""


class Minimal(MessengerAdapter):
    name = "minimal"
    settings = Settings
    routes = ()

    async def send_message(self, message: OutgoingMessage) -> SendResult:
        return SendResult(message_ids=("1",))


def variant(**attributes: Any) -> type[MessengerAdapter]:
    return type("Variant", (Minimal,), {"__module__": __name__, **attributes})


async def _noop(self: object, *args: object) -> None:
    return None


def _sync_send(self: object, message: OutgoingMessage) -> SendResult:
    return SendResult(message_ids=("1",))


class Registers:
    """A plugin object that registers the given adapter classes."""

    def __init__(self, *adapters: object) -> None:
        self.adapters = adapters

    @hookimpl
    def register_messengers(self, register: RegisterMessenger) -> None:
        for adapter in self.adapters:
            register(adapter)  # type: ignore[arg-type]


class Suffix:
    def __init__(self, suffix: str) -> None:
        self.suffix = suffix

    @hookimpl
    def inbound_message(self, event: InboundMessage) -> InboundMessage:
        return msgspec.structs.replace(event, text=event.text + self.suffix)


class ReturnsJunk:
    @hookimpl
    def inbound_message(self) -> str:
        return "junk"


def module(name: str, **functions: Callable[..., Any]) -> ModuleType:
    plugin = ModuleType(name)
    plugin.__dict__.update(functions)
    return plugin


@hookimpl
def inbound_mesage(event: InboundMessage) -> None:  # the typo is the point
    return None


@hookimpl
def outgoing_message(msg: OutgoingMessage) -> None:  # ``msg`` is not an argument of the hook
    return None


def write_plugin(directory: Path, name: str, source: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.py"
    path.write_text(source, encoding="utf-8")
    return path


def inbound(text: str) -> InboundMessage:
    return InboundMessage(chat="100", timestamp=1.0, dedup_key="k", sender=Person(id="1"), message_id="1", text=text)


@pytest.fixture
def local_pm() -> pluggy.PluginManager:
    return get_plugin_manager(load_entrypoints=False, plugin_dirs=[PLUGINS])


# -- fake distributions (as pluggy's own tests do) ----------------------------------------------------


class FakeEntryPoint:
    group = "amoconnect"

    def __init__(self, name: str, plugin: object) -> None:
        self.name = name
        self.value = f"{name}_plugin:plugin"
        self._plugin = plugin

    def load(self) -> object:
        if isinstance(self._plugin, BaseException):
            raise self._plugin
        return self._plugin


class FakeDistribution:
    def __init__(self, name: str, version: str, *entry_points: FakeEntryPoint) -> None:
        self.metadata = {"name": name}
        self.version = version
        self.entry_points = entry_points


@pytest.fixture
def installed(monkeypatch: pytest.MonkeyPatch) -> list[FakeDistribution]:
    distributions: list[FakeDistribution] = []
    monkeypatch.setattr(importlib.metadata, "distributions", lambda: list(distributions))
    return distributions


@pytest.fixture
def echo_module(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(PLUGINS))
    return importlib.import_module("echo")


@pytest.fixture
def shout_module(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(PLUGINS))
    return importlib.import_module("shout")


# -- validation ----------------------------------------------------------------------------------------

CASES = {
    "reactions without send_reaction": (
        {"capabilities": frozenset({Capability.reactions}), "reactions": ReactionSet.any()},
        "declares capability 'reactions' but does not implement send_reaction()",
    ),
    "typing without send_typing": (
        {"capabilities": frozenset({Capability.typing})},
        "declares capability 'typing' but does not implement send_typing()",
    ),
    "comments without send_comment_reply": (
        {"capabilities": frozenset({Capability.comments})},
        "declares capability 'comments' but does not implement send_comment_reply()",
    ),
    "sync method": ({"send_message": _sync_send}, "send_message() must be 'async def'"),
    "bad name": ({"name": "Tele gram"}, "name 'Tele gram' is not a messenger name"),
    "settings not a Struct": ({"settings": dict}, "settings must be a msgspec.Struct subclass"),
    "reactions without capability": (
        {"reactions": ReactionSet.of("👍")},
        "declares reactions without capability 'reactions'",
    ),
    "reactions capability without reactions": (
        {"capabilities": frozenset({Capability.reactions}), "send_reaction": _noop},
        "declares capability 'reactions' with an empty reaction set",
    ),
    "window without capability": ({"reply_window": 86400}, "declares reply_window without capability 'time_window'"),
    "capability without window": (
        {"capabilities": frozenset({Capability.time_window})},
        "declares capability 'time_window' without reply_window",
    ),
    "negative window": (
        {"capabilities": frozenset({Capability.time_window}), "reply_window": -1},
        "reply_window must be a positive number",
    ),
    "unknown capability": ({"capabilities": frozenset({"teleport"})}, "unknown capability 'teleport'"),
    "capabilities not a frozenset": ({"capabilities": {Capability.media}}, "capabilities must be a frozenset"),
    "bad rate limit": ({"rate_limits": (RateLimit(count=0, per=1.0),)}, "needs count >= 1 and per > 0"),
    "rate limits not a tuple": ({"rate_limits": [RateLimit(count=1, per=1.0)]}, "rate_limits must be a tuple"),
    "absolute route": (
        {"routes": (Route(path="/updates"),), "verify": _noop, "parse": _noop},
        "route path '/updates' must be relative",
    ),
    "route method": (
        {"routes": (Route(methods=("PUT",)),), "verify": _noop, "parse": _noop},
        "has methods ('PUT',); allowed: GET, POST",
    ),
    "route twice": ({"routes": (Route(), Route()), "verify": _noop, "parse": _noop}, "route path '' is declared twice"),
    "routes without verify": (
        {"routes": (Route(),), "parse": _noop},
        "serves webhook routes but does not implement verify()",
    ),
    "routes without parse": (
        {"routes": (Route(),), "verify": _noop},
        "serves webhook routes but does not implement parse()",
    ),
    "sandbox not callable": ({"sandbox_factory": 5}, "sandbox_factory must be callable or None"),
    "ack not a response": ({"webhook_ack": b"ok"}, "webhook_ack must be a WebhookResponse"),
}


@pytest.mark.parametrize(("attributes", "expected"), CASES.values(), ids=CASES.keys())
def test_validation_names_plugin_class_and_problem(attributes: dict[str, Any], expected: str) -> None:
    with pytest.raises(PluginError) as caught:
        validate_adapter(variant(**attributes), plugin="acme")
    message = str(caught.value)
    assert message.startswith(f"plugin 'acme', adapter {__name__}.Variant: ")
    assert expected in message


def test_valid_adapters_pass(echo_module: ModuleType) -> None:
    validate_adapter(Minimal)
    validate_adapter(echo_module.EchoAdapter)


def test_missing_send_message_and_name() -> None:
    class Nameless(MessengerAdapter):
        settings = Settings
        routes = ()

    with pytest.raises(PluginError) as caught:
        validate_adapter(Nameless, plugin="acme")
    message = str(caught.value)
    assert "plugin 'acme'" in message
    assert "has 2 problems" in message
    assert "\n  - does not implement send_message()" in message
    assert "\n  - name None is not a messenger name" in message


def test_only_adapter_classes_register() -> None:
    with pytest.raises(PluginError, match=r"plugin 'acme' registered builtins\.dict, which is not a MessengerAdapter"):
        validate_adapter(dict, plugin="acme")


def test_plugin_name_defaults_to_the_messenger_name() -> None:
    with pytest.raises(PluginError, match=r"^plugin 'minimal', adapter"):
        validate_adapter(variant(settings=None))


# -- collecting messengers -------------------------------------------------------------------------------


def test_registrar_validates_and_names_the_registering_plugin() -> None:
    pm = get_plugin_manager(load_entrypoints=False)
    pm.register(Registers(variant(capabilities=frozenset({Capability.typing}))), name="acme")
    with pytest.raises(PluginError, match=r"^plugin 'acme', adapter .*send_typing\(\)"):
        collect_messengers(pm)


def test_duplicate_messenger_names_are_refused() -> None:
    pm = get_plugin_manager(load_entrypoints=False)
    pm.register(Registers(Minimal), name="first")
    pm.register(Registers(variant()), name="second")
    with pytest.raises(PluginError) as caught:
        collect_messengers(pm)
    message = str(caught.value)
    assert "messenger 'minimal' is registered twice" in message
    # pluggy calls the last registered plugin first
    assert f"by plugin 'second' ({__name__}.Variant) and by plugin 'first' ({__name__}.Minimal)" in message


def test_collect_messengers(local_pm: pluggy.PluginManager) -> None:
    messengers = collect_messengers(local_pm)
    assert list(messengers) == ["echo"]
    assert messengers["echo"].__module__ == "_amoconnect_plugin_dir.echo"


# -- loading ---------------------------------------------------------------------------------------------


def test_plugin_dir_loads_every_file_as_a_plugin(local_pm: pluggy.PluginManager) -> None:
    assert sorted(name for name, _ in local_pm.list_name_plugin()) == ["echo", "shout"]
    echo = collect_messengers(local_pm)["echo"]
    # annotations of a plugin-dir module resolve (it is in sys.modules)
    assert msgspec.convert({"secret": "s"}, type=echo.settings) == echo.settings(secret="s")  # type: ignore[call-arg]


def test_plugin_dir_errors(tmp_path: Path) -> None:
    with pytest.raises(PluginError, match="does not exist or is not a directory"):
        get_plugin_manager(load_entrypoints=False, plugin_dirs=[tmp_path / "missing"])
    write_plugin(tmp_path / "broken", "broken", "import no_such_module_here\n")
    with pytest.raises(PluginError, match=r"plugin file '.*broken\.py' failed to import: ModuleNotFoundError"):
        get_plugin_manager(load_entrypoints=False, plugin_dirs=[tmp_path / "broken"])
    write_plugin(
        tmp_path / "typo",
        "typo",
        "from amoconnect.hookspecs import hookimpl\n\n@hookimpl\ndef startup_route(add_route):\n    pass\n",
    )
    with pytest.raises(PluginError, match=r"^plugin 'typo': unknown hook 'startup_route'"):
        get_plugin_manager(load_entrypoints=False, plugin_dirs=[tmp_path / "typo"])


def test_blocked_plugins_are_not_even_imported(tmp_path: Path) -> None:
    write_plugin(tmp_path, "broken", "raise RuntimeError('imported')\n")
    pm = get_plugin_manager(load_entrypoints=False, plugin_dirs=[tmp_path], blocked=["broken"])
    assert pm.get_plugin("broken") is None


def test_extra_modules_by_path_and_object(echo_module: ModuleType, shout_module: ModuleType) -> None:
    pm = get_plugin_manager(load_entrypoints=False, extra_modules=["echo", shout_module])
    assert pm.get_plugin("echo") is echo_module
    assert pm.get_plugin("shout") is shout_module
    with pytest.raises(PluginError, match="plugin module 'no_such_plugin' failed to import: ModuleNotFoundError"):
        get_plugin_manager(load_entrypoints=False, extra_modules=["no_such_plugin"])


def test_a_plugin_name_is_taken_once(echo_module: ModuleType) -> None:
    with pytest.raises(PluginError, match="plugin name 'echo' is taken twice"):
        get_plugin_manager(load_entrypoints=False, extra_modules=[echo_module], plugin_dirs=[PLUGINS])


def test_hook_arguments_are_checked() -> None:
    with pytest.raises(PluginError, match=r"(?s)^plugin 'bad' is invalid: .*\{'msg'\} are declared in the hookimpl"):
        get_plugin_manager(load_entrypoints=False, extra_modules=[module("bad", outgoing_message=outgoing_message)])


def test_entry_points_load_with_their_distribution(
    installed: list[FakeDistribution], echo_module: ModuleType, shout_module: ModuleType
) -> None:
    installed.append(FakeDistribution("amoconnect-echo", "1.2.3", FakeEntryPoint("echo", echo_module)))
    installed.append(FakeDistribution("amoconnect-shout", "0.1", FakeEntryPoint("shout", shout_module)))
    pm = get_plugin_manager()
    assert pm.get_plugin("echo") is echo_module
    assert collect_messengers(pm) == {"echo": echo_module.EchoAdapter}
    described = {plugin["name"]: plugin for plugin in describe_plugins(pm)}
    assert described["echo"]["distribution"] == "amoconnect-echo"
    assert described["echo"]["version"] == "1.2.3"
    assert described["shout"]["hooks"] == ["inbound_message", "outgoing_message"]


def test_only_loads_one_plugin_by_name(
    installed: list[FakeDistribution], echo_module: ModuleType, shout_module: ModuleType
) -> None:
    installed.append(
        FakeDistribution(
            "amoconnect-both",
            "1.0",
            FakeEntryPoint("echo", echo_module),
            FakeEntryPoint("shout", shout_module),
        )
    )
    pm = get_plugin_manager(only="shout")
    assert [name for name, _ in pm.list_name_plugin()] == ["shout"]
    with pytest.raises(PluginError, match=r"^plugin 'nope' is not installed"):
        get_plugin_manager(only="nope")
    with pytest.raises(PluginError, match=r"^plugin 'shout' is blocked"):
        get_plugin_manager(only="shout", blocked=["shout"])


def test_blocked_entry_points_do_not_load(installed: list[FakeDistribution]) -> None:
    installed.append(FakeDistribution("amoconnect-broken", "1.0", FakeEntryPoint("broken", RuntimeError("boom"))))
    pm = get_plugin_manager(blocked=["broken"])
    assert describe_plugins(pm) == []


def test_entry_point_failures_name_the_entry_point_and_distribution(
    installed: list[FakeDistribution], echo_module: ModuleType, shout_module: ModuleType
) -> None:
    installed.append(FakeDistribution("amoconnect-echo", "1.0", FakeEntryPoint("echo", echo_module)))
    installed.append(
        FakeDistribution(
            "amoconnect-two", "2.0", FakeEntryPoint("shout", shout_module), FakeEntryPoint("broken", ImportError("no"))
        )
    )
    with pytest.raises(
        PluginError,
        match=r"^installed plugin 'broken' failed to load: ImportError: no \(entry point broken = "
        r"'broken_plugin:plugin' of distribution amoconnect-two 2.0\); to run without it, block it: "
        r"`amoconnect --block broken COMMAND ...`",
    ):
        get_plugin_manager()


def test_entry_point_with_an_unknown_hook(installed: list[FakeDistribution]) -> None:
    installed.append(
        FakeDistribution(
            "amoconnect-typo", "1.0", FakeEntryPoint("typo", module("typo", inbound_mesage=inbound_mesage))
        )
    )
    with pytest.raises(PluginError, match=r"^plugin 'typo': unknown hook 'inbound_mesage'.*docs/hooks.md"):
        get_plugin_manager()


def test_local_plugins_replace_installed_ones(installed: list[FakeDistribution]) -> None:
    installed.append(FakeDistribution("amoconnect-echo", "9.9", FakeEntryPoint("echo", RuntimeError("not loaded"))))
    pm = get_plugin_manager(plugin_dirs=[PLUGINS])
    assert pm.get_plugin("echo").__name__ == "_amoconnect_plugin_dir.echo"


# -- describing ------------------------------------------------------------------------------------------


def test_describe_plugins(local_pm: pluggy.PluginManager) -> None:
    described = describe_plugins(local_pm)
    assert json.loads(json.dumps(described)) == [
        {
            "name": "echo",
            "distribution": None,
            "version": None,
            "hooks": ["register_messengers"],
            "messengers": [
                {
                    "name": "echo",
                    "adapter": "_amoconnect_plugin_dir.echo.EchoAdapter",
                    "capabilities": ["reactions", "time_window", "typing"],
                    "reactions": ["❤", "👍"],
                    "reply_window": 86400.0,
                }
            ],
        },
        {
            "name": "shout",
            "distribution": None,
            "version": None,
            "hooks": ["inbound_message", "outgoing_message"],
            "messengers": [],
        },
    ]


def test_describe_any_reactions() -> None:
    pm = get_plugin_manager(load_entrypoints=False)
    adapter = variant(capabilities=frozenset({Capability.reactions}), reactions=ReactionSet.any(), send_reaction=_noop)
    pm.register(Registers(adapter), name="acme")
    assert describe_plugins(pm)[0]["messengers"][0]["reactions"] == "any"


# -- calling hooks ---------------------------------------------------------------------------------------


def test_alter_hooks_chain(local_pm: pluggy.PluginManager) -> None:
    local_pm.register(Suffix(" ok"), name="suffix")
    # the last registered runs first: " ok" is appended, then shout capitalises everything
    assert alter_inbound_message(local_pm, inbound("hi"), CONVERSATION).text == "HI OK"
    sent = alter_outgoing_message(local_pm, OutgoingMessage(chat="100", text="hi"), CONVERSATION)
    assert sent.text == "hi (via main)"
    untouched = OutgoingMessage(chat="100")
    assert alter_outgoing_message(local_pm, untouched, CONVERSATION) is untouched


def test_alter_hooks_without_implementations() -> None:
    event = inbound("hi")
    assert alter_inbound_message(get_plugin_manager(load_entrypoints=False), event, CONVERSATION) is event


def test_alter_hooks_check_what_plugins_return() -> None:
    pm = get_plugin_manager(load_entrypoints=False)
    pm.register(ReturnsJunk(), name="junk")
    with pytest.raises(PluginError, match=r"^plugin 'junk': inbound_message returned a str; return None or a"):
        alter_inbound_message(pm, inbound("hi"), CONVERSATION)


def test_hooks_implemented_under_another_name_are_refused() -> None:
    class Renamed:
        @hookimpl(specname="inbound_message")
        def capitalise(self, event: InboundMessage) -> InboundMessage:
            return event

    pm = get_plugin_manager(load_entrypoints=False)
    pm.register(Renamed(), name="renamed")
    pm.register(Suffix("!"), name="suffix")
    with pytest.raises(PluginError, match="plugin 'renamed' implements inbound_message under another function name"):
        alter_inbound_message(pm, inbound("hi"), CONVERSATION)


# -- tracing ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["1", "true", "yes"])
def test_tracing_env_var_logs_hook_calls(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(TRACE_ENV, value)
    pm = get_plugin_manager(load_entrypoints=False, plugin_dirs=[PLUGINS])
    with capture_logs() as logs:
        alter_inbound_message(pm, inbound("hi"), CONVERSATION)
    assert [(log["event"], log["hook"]) for log in logs] == [
        ("hook call", "inbound_message"),
        ("hook done", "inbound_message"),
    ]
    assert logs[0]["plugins"] == ["shout"]
    assert set(logs[0]["arguments"]) == {"event", "conversation"}
    assert "text='HI'" in logs[1]["result"]


def test_tracing_logs_failures(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TRACE_ENV, "1")
    pm = get_plugin_manager(load_entrypoints=False)
    pm.register(Registers(variant(name="Bad Name")), name="acme")
    with capture_logs() as logs, pytest.raises(PluginError):
        collect_messengers(pm)
    assert logs[-1]["event"] == "hook failed"
    assert "Bad Name" in logs[-1]["error"]


@pytest.mark.parametrize("value", [None, "", "0", "no"])
def test_tracing_is_off_by_default(monkeypatch: pytest.MonkeyPatch, value: str | None) -> None:
    if value is None:
        monkeypatch.delenv(TRACE_ENV, raising=False)
    else:
        monkeypatch.setenv(TRACE_ENV, value)
    pm = get_plugin_manager(load_entrypoints=False, plugin_dirs=[PLUGINS])
    with capture_logs() as logs:
        collect_messengers(pm)
    assert logs == []


# -- the adapter contract in use -------------------------------------------------------------------------


@pytest.mark.anyio
async def test_an_adapter_serves_webhooks_and_sends(local_pm: pluggy.PluginManager) -> None:
    submitted: list[InboundEvent] = []

    async def submit(events: Sequence[InboundEvent]) -> None:
        submitted.extend(events)

    echo = collect_messengers(local_pm)["echo"]
    async with httpx.AsyncClient() as http:
        context = AdapterContext(
            instance="main", http=http, log=structlog.get_logger(), state=MemoryState(), submit=submit
        )
        adapter = echo(msgspec.convert({"secret": "s3"}, type=echo.settings), context)
        handshake = await adapter.verify(WebhookRequest(method="GET", query=httpx.QueryParams({"challenge": "42"})))
        assert handshake == WebhookResponse(body=b"42")
        with pytest.raises(SignatureError):
            await adapter.verify(WebhookRequest(method="POST", headers=httpx.Headers({"X-Echo-Secret": "no"})))
        request = WebhookRequest(
            method="POST",
            headers=httpx.Headers({"X-Echo-Secret": "s3"}),
            body=b'{"chat": "100", "user": "7", "id": "5", "text": "hi"}',
        )
        assert await adapter.verify(request) is None
        [event] = await adapter.parse(request)
        assert isinstance(event, InboundMessage)
        assert (event.chat, event.sender.id, event.text, event.dedup_key) == ("100", "7", "hi", "5")
        await adapter.context.submit([event])
        assert submitted == [event]

        assert await adapter.send_message(OutgoingMessage(chat="100", text="yo")) == SendResult(message_ids=("echo-1",))
        await adapter.send_reaction(OutgoingReaction(chat="100", message_id="5", emoji="👍"))
        await adapter.send_typing(OutgoingTyping(chat="100", until=2.0))
        with pytest.raises(NotImplementedError, match="does not declare capability 'comments'"):
            # the core never calls the method of a capability the adapter does not declare
            await adapter.send_comment_reply(OutgoingCommentReply(chat="1", post_id="p", comment_id="c", text="t"))
        await adapter.startup()
        await adapter.run()
        await adapter.shutdown()


# -- meta: the hooks are documented ----------------------------------------------------------------------


def _hookspecs() -> list[Callable[..., Any]]:
    return [value for value in vars(hookspecs).values() if hasattr(value, "amoconnect_spec")]


def test_every_hook_has_a_docstring_saying_when_gets_returns() -> None:
    specs = _hookspecs()
    assert {spec.__name__ for spec in specs} == {
        "register_messengers",
        "inbound_message",
        "outgoing_message",
        "status_changed",
        "find_contact",
        "startup_routes",
    }
    for spec in specs:
        doc = inspect.getdoc(spec) or ""
        assert "Fires" in doc, spec.__name__
        assert "Return" in doc, spec.__name__


def test_every_hook_is_in_the_reference_with_its_signature() -> None:
    text = DOCS.read_text(encoding="utf-8")
    documented = set(re.findall(r"^## `(\w+)\((.*)\)`$", text, flags=re.MULTILINE))
    expected = {(spec.__name__, ", ".join(inspect.signature(spec).parameters)) for spec in _hookspecs()}
    assert documented == expected


@pytest.mark.parametrize("module", [hookspecs, plugins], ids=lambda module: module.__name__)
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
