"""The conformance suite: does a messenger plugin do what its declarations promise?

Subclass :class:`MessengerConformance` in a test module of the plugin, name the plugin, and
pytest runs every check against the real runtime, the fake amojo and the plugin's fake::

    from amoconnect.testing.conformance import MessengerConformance


    class TestConformance(MessengerConformance):
        plugin = "amoconnect_viber.plugin"     # the module the entry point names

Each test exercises one promise both ways (a client in the messenger, a manager in amoCRM):
text, media, delivery and read receipts, reactions within the declared set and refusal outside
it, typing, edits, replies, buttons and list messages (a press comes back as
``callback_data``), templates, the reply window, writing first, comments, what the business
writes in the messenger's own app (echoes: in as the channel bot, silently; the manager's own
replies never come back as echoes). A test whose
capability the adapter does not declare is skipped, saying so. The fake is driven through
:class:`~amoconnect.testing.fakes.ConformanceMessenger`; :data:`~amoconnect.testing.fakes.DRIVER_METHODS`
says which of its methods each capability needs. docs/plugins.md walks through it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar, TypeVar

import httpx
import pytest

from ..adapter import MessengerAdapter
from ..amojo import wire
from ..capabilities import Capability
from ..model import Button, ListMessage, ListRow, ListSection, Template, TemplateParam
from .fake_amojo import EmitResult, StoredMessage
from .fakes import DRIVER_METHODS, ClientMedia, ReceivedMessage, ReceivedReaction
from .kit import PUBLIC_URL, ConnectorRig, connector, load_plugin
from .security import check_refused_unread

__all__ = ["PICTURE", "MessengerConformance", "needs"]

_F = TypeVar("_F", bound=Callable[..., Any])

PICTURE = ClientMedia(
    kind="picture", content=b"\x89PNG\r\n\x1a\n a client's photo", file_name="photo.png", mime_type="image/png"
)
"""The picture a client sends in the media test."""
_OUTSIDE_ANY_SET = ("🦄", "🧀", "🛸", "🪐", "🦑")


def needs(*capabilities: Capability) -> Callable[[_F], _F]:
    """Mark a conformance test as needing ``capabilities``: it is skipped for an adapter that declares fewer."""

    def mark(test: _F) -> _F:
        test.conformance_needs = capabilities  # type: ignore[attr-defined]
        return test

    return mark


class MessengerConformance:
    """The checks every messenger plugin passes; subclass it as ``TestConformance`` and set :attr:`plugin`.

    Override :meth:`make_fake` when the adapter has no ``sandbox_factory`` or its fake needs a
    driver wrapper (the instance's settings are the fake's ``sandbox_settings(api_url)``); the
    class attributes choose the chat, phone numbers and post the tests use, in the forms the
    messenger's ids take.
    """

    pytestmark: ClassVar[list[pytest.MarkDecorator]] = [pytest.mark.anyio]

    plugin: ClassVar[str | ModuleType | type[MessengerAdapter]]
    """The plugin module (or its dotted path, as the entry point names it), or an adapter class."""
    messenger: ClassVar[str | None] = None
    """The messenger to test, when the plugin registers several."""
    chat: ClassVar[str] = "1001"
    """The client's chat id."""
    phone: ClassVar[str] = "+15550001122"
    """A phone number the fake knows (write first)."""
    unknown_phone: ClassVar[str] = "+15550009999"
    """A phone number no one has on the messenger."""
    post_id: ClassVar[str] = "501"
    """The post the client comments on."""
    within: ClassVar[float] = 5.0
    """Seconds to wait for anything to arrive."""

    # -- to override -----------------------------------------------------------------------------

    def make_fake(self, http: httpx.AsyncClient) -> Any:
        """The messenger's fake delivering its webhooks through ``http``: ``sandbox_factory(http=http)`` by default."""
        adapter = self.adapter_class()
        if adapter.sandbox_factory is None:
            raise NotImplementedError(
                f"{adapter.__qualname__} has no sandbox_factory: override make_fake() to build the messenger's fake"
            )
        return adapter.sandbox_factory(http=http)

    # -- the rig -----------------------------------------------------------------------------------

    def adapter_class(self) -> type[MessengerAdapter]:
        """The adapter under test."""
        return load_plugin(self.plugin, self.messenger)[1]

    @pytest.fixture
    async def rig(self, request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ConnectorRig]:
        """A running connector for the test, or a skip when the adapter lacks what the test needs."""
        adapter = self.adapter_class()
        for capability in getattr(request.function, "conformance_needs", ()):
            if capability not in adapter.capabilities:
                pytest.skip(f"{adapter.name} does not declare capability {capability.value!r}")
        async with connector(
            self.plugin, messenger=adapter.name, make_fake=self.make_fake, workdir=tmp_path, within=self.within
        ) as rig:
            self._check_driver(adapter, rig.fake)
            yield rig
            letters = await rig.runtime.store.dead_letters()
            assert not letters, "the connector gave up on jobs: " + "; ".join(letter.error for letter in letters)

    @staticmethod
    def _check_driver(adapter: type[MessengerAdapter], fake: Any) -> None:
        wanted = [None, *sorted(adapter.capabilities)]
        missing = sorted(
            {name for capability in wanted for name in DRIVER_METHODS.get(capability, ()) if not hasattr(fake, name)}
        )
        if missing:
            pytest.fail(
                f"the fake of {adapter.name} ({type(fake).__qualname__}) lacks {', '.join(missing)}, which the "
                "conformance suite needs for the declared capabilities (amoconnect.testing.fakes.DRIVER_METHODS)"
            )

    # -- helpers ---------------------------------------------------------------------------------

    async def client_says(self, rig: ConnectorRig, text: str = "Hello, is anyone there?") -> StoredMessage:
        """The client writes ``text``; amoCRM's record of it."""
        before = len(rig.client_messages(self.chat))
        await rig.fake.client_writes(self.chat, text)
        return (await rig.arrived(self.chat, before + 1))[-1]

    async def reaches_client(
        self, rig: ConnectorRig, emitting: Any, chat: str | None = None
    ) -> tuple[EmitResult, ReceivedMessage]:
        """Await the manager's action ``emitting``; what the client got from it (a failure reported to amoCRM fails)."""
        chat = chat or self.chat
        before = len(rig.fake.received(chat))
        emitted: EmitResult = await emitting
        assert emitted.status == 200, f"the connector answered amoCRM's webhook with HTTP {emitted.status}"
        stored = rig.amojo.message(emitted.message_id or "")

        def outcome() -> ReceivedMessage | wire.DeliveryStatusRequest | None:
            got: list[ReceivedMessage] = list(rig.fake.received(chat))
            if len(got) > before:
                return got[-1]
            return next((s for s in reversed(stored.statuses) if s.delivery_status == -1), None)

        result = await rig.eventually(outcome)
        if isinstance(result, wire.DeliveryStatusRequest):
            pytest.fail(f"the manager's message failed: error {result.error_code}: {result.error}")
        assert isinstance(result, ReceivedMessage)
        # The job records the send (and a new conversation) just after the messenger answered:
        # wait for it, as a client's answer seconds later would find it.
        await rig.messenger_id(emitted.message_id or "")
        return emitted, result

    def allowed_emoji(self, adapter: MessengerAdapter) -> str:
        """An emoji the messenger accepts as a reaction."""
        only = adapter.reactions.only
        return "👍" if only is None or "👍" in only else sorted(only)[0]

    # -- text ------------------------------------------------------------------------------------

    async def test_client_text_reaches_amocrm(self, rig: ConnectorRig) -> None:
        arrived = await self.client_says(rig, "Hello, is anyone there?")
        assert arrived.text == "Hello, is anyone there?"
        assert arrived.payload is not None
        assert arrived.payload.conversation_id == rig.conversation(self.chat)
        assert arrived.payload.source is not None
        assert arrived.payload.source.external_id == rig.instance
        assert arrived.payload.sender.id, "the client needs an id"
        assert await rig.messenger_id(arrived.id), "the adapter gives every message the messenger's id"

    async def test_manager_text_reaches_the_client(self, rig: ConnectorRig) -> None:
        await self.client_says(rig)
        emitted, got = await self.reaches_client(rig, rig.manager_writes(self.chat, "We are here, how can we help?"))
        assert got.text == "We are here, how can we help?"
        assert "We are here, how can we help?" in rig.fake.sandbox_received(self.chat)
        assert await rig.messenger_id(emitted.message_id or "") == got.message_id

    async def test_a_request_not_from_the_messenger_is_refused(self, rig: ConnectorRig) -> None:
        routes = [route for route in type(rig.adapter).routes if "POST" in route.methods]
        if not routes:
            pytest.skip(f"{rig.messenger} serves no webhooks")
        for route in routes:
            response = await rig.post_webhook(b"{}", path=route.path, headers={"Content-Type": "application/json"})
            assert response.status_code in (401, 403), (
                f"an unsigned POST to the webhook {route.path or '/'!r} got HTTP {response.status_code}: "
                "verify() must raise SignatureError for a request the messenger did not sign"
            )
        assert not rig.amojo.messages

    async def test_a_request_without_credentials_is_refused_before_its_body(self, rig: ConnectorRig) -> None:
        if type(rig.adapter).verify_headers is MessengerAdapter.verify_headers:
            pytest.skip(f"{rig.messenger} checks requests from their bodies alone (no verify_headers)")
        route = next(route for route in type(rig.adapter).routes if "POST" in route.methods)  # the main webhook
        url = f"/hooks/{rig.messenger}/{rig.instance}" + (f"/{route.path}" if route.path else "")
        headers = {"Content-Type": "application/json"}
        await check_refused_unread(rig.client, url, rig.runtime.store, headers=headers)

    # -- media -----------------------------------------------------------------------------------

    @needs(Capability.media)
    async def test_client_media_reaches_amocrm(self, rig: ConnectorRig) -> None:
        await rig.fake.client_writes(self.chat, "Look at this", media=PICTURE)
        (arrived,) = await rig.arrived(self.chat)
        assert arrived.type == "picture"
        assert arrived.text == "Look at this"
        url = arrived.content.media
        assert url, "amoCRM needs a URL of the media"
        client = rig.client if url.startswith(PUBLIC_URL) else rig.http
        assert client is not None
        response = await client.get(url)
        assert response.status_code == 200, f"amoCRM could not download {url}: HTTP {response.status_code}"
        assert response.content == PICTURE.content

    @needs(Capability.media)
    async def test_manager_media_reaches_the_client(self, rig: ConnectorRig) -> None:
        await self.client_says(rig)
        _, picture = await self.reaches_client(rig, rig.manager_sends_media(self.chat, "picture", text="Our catalogue"))
        assert (picture.kind, picture.text) == ("picture", "Our catalogue")
        _, document = await self.reaches_client(rig, rig.manager_sends_media(self.chat, "file"))
        assert document.kind == "file"

    # -- statuses --------------------------------------------------------------------------------

    async def _status_reaches_amocrm(self, rig: ConnectorRig, status: str, code: int) -> None:
        await self.client_says(rig)
        emitted, got = await self.reaches_client(rig, rig.manager_writes(self.chat, "Did you get this?"))
        await rig.fake.deliver_status(self.chat, got.message_id, status)
        stored = rig.amojo.message(emitted.message_id or "")
        await rig.eventually(lambda: any(s.delivery_status == code for s in stored.statuses))

    @needs(Capability.delivery_receipts)
    async def test_delivery_receipts_reach_amocrm(self, rig: ConnectorRig) -> None:
        await self._status_reaches_amocrm(rig, "delivered", 1)

    @needs(Capability.read_receipts)
    async def test_read_receipts_reach_amocrm(self, rig: ConnectorRig) -> None:
        await self._status_reaches_amocrm(rig, "read", 2)

    # -- reactions -------------------------------------------------------------------------------

    async def _reactions(self, rig: ConnectorRig, count: int) -> list[ReceivedReaction]:
        found: list[ReceivedReaction] = await rig.eventually(
            lambda: len(got := list(rig.fake.received_reactions(self.chat))) >= count and got
        )
        return found

    @needs(Capability.reactions)
    async def test_manager_reactions_reach_the_client(self, rig: ConnectorRig) -> None:
        arrived = await self.client_says(rig)
        target = await rig.messenger_id(arrived.id)
        emoji = self.allowed_emoji(rig.adapter)
        await rig.manager_reacts(self.chat, arrived.id, emoji)
        (reaction,) = await self._reactions(rig, 1)
        assert reaction.message_id == target
        assert reaction.emoji == rig.adapter.reactions.match(emoji)
        await rig.manager_unreacts(self.chat, arrived.id)
        taken_back = (await self._reactions(rig, 2))[-1]
        assert taken_back == ReceivedReaction(target, "")

    @needs(Capability.reactions)
    async def test_manager_reactions_outside_the_set_are_not_sent(self, rig: ConnectorRig) -> None:
        reactions = rig.adapter.reactions
        if reactions.only is None:
            pytest.skip(f"{rig.messenger} accepts any emoji as a reaction: nothing to refuse")
        outside = next(emoji for emoji in _OUTSIDE_ANY_SET if emoji not in reactions)
        arrived = await self.client_says(rig)
        allowed = self.allowed_emoji(rig.adapter)
        await rig.manager_reacts(self.chat, arrived.id, outside)
        await rig.manager_reacts(self.chat, arrived.id, allowed)  # runs after the first: a marker that it is done
        assert [r.emoji for r in await self._reactions(rig, 1)] == [reactions.match(allowed)]

    @needs(Capability.reactions)
    async def test_client_reactions_reach_amocrm(self, rig: ConnectorRig) -> None:
        await self.client_says(rig)
        emitted, got = await self.reaches_client(rig, rig.manager_writes(self.chat, "React to me"))
        emoji = self.allowed_emoji(rig.adapter)
        await rig.fake.client_reacts(self.chat, got.message_id, emoji)
        (reaction,) = await rig.eventually(lambda: list(rig.amojo.reactions))
        assert reaction.message_id == emitted.message_id
        assert reaction.request.type == "react"
        assert rig.adapter.reactions.match(reaction.request.emoji or "") == rig.adapter.reactions.match(emoji)
        await rig.fake.client_reacts(self.chat, got.message_id, emoji, removed=True)
        undone = await rig.eventually(lambda: len(rig.amojo.reactions) >= 2 and rig.amojo.reactions[-1])
        assert undone.request.type == "unreact"

    # -- typing ----------------------------------------------------------------------------------

    @needs(Capability.typing)
    async def test_manager_typing_reaches_the_client(self, rig: ConnectorRig) -> None:
        await self.client_says(rig)
        await rig.manager_types(self.chat)
        await rig.eventually(lambda: rig.fake.received_typing(self.chat) >= 1)

    @needs(Capability.typing)
    async def test_client_typing_reaches_amocrm(self, rig: ConnectorRig) -> None:
        if not hasattr(rig.fake, "client_types"):
            pytest.skip(f"the fake of {rig.messenger} has no client_types(): the messenger does not report typing")
        await self.client_says(rig)
        await rig.fake.client_types(self.chat)
        conversation = rig.conversation(self.chat)
        await rig.eventually(lambda: [t for t in rig.amojo.typing if t.request.conversation_id == conversation])

    # -- edits and replies -----------------------------------------------------------------------

    @needs(Capability.edits)
    async def test_client_edits_reach_amocrm(self, rig: ConnectorRig) -> None:
        arrived = await self.client_says(rig, "Helo")
        await rig.fake.client_edits(self.chat, await rig.messenger_id(arrived.id), "Hello")
        stored = rig.amojo.message(arrived.id)
        edits = await rig.eventually(lambda: list(stored.edits))
        assert edits[-1].message.text == "Hello"

    @needs(Capability.replies)
    async def test_manager_quotes_reach_the_client(self, rig: ConnectorRig) -> None:
        arrived = await self.client_says(rig, "Which sizes do you have?")
        quoted = await rig.messenger_id(arrived.id)
        _, got = await self.reaches_client(rig, rig.manager_writes(self.chat, "S, M and L", reply_to=arrived.id))
        assert got.reply_to == quoted

    @needs(Capability.replies)
    async def test_client_quotes_reach_amocrm(self, rig: ConnectorRig) -> None:
        await self.client_says(rig)
        emitted, got = await self.reaches_client(rig, rig.manager_writes(self.chat, "Pickup or delivery?"))
        await rig.fake.client_writes(self.chat, "Delivery", reply_to=got.message_id)
        answer = (await rig.arrived(self.chat, 2))[-1]
        assert answer.payload is not None
        assert answer.payload.reply_to is not None, "the quote did not reach amoCRM"
        assert answer.payload.reply_to.message.id == emitted.message_id

    # -- buttons and lists -----------------------------------------------------------------------

    async def _press_comes_back(self, rig: ConnectorRig, data: str, expected: str) -> None:
        before = len(rig.client_messages(self.chat))
        await rig.fake.client_presses(self.chat, data)
        press = (await rig.arrived(self.chat, before + 1))[-1]
        assert isinstance(press.content, wire.MessageContent)
        assert press.content.callback_data == expected

    @needs(Capability.buttons)
    async def test_buttons_reach_the_client_and_presses_come_back(self, rig: ConnectorRig) -> None:
        await self.client_says(rig)
        rows = [[Button(text="Yes"), Button(text="No")], [Button(text="Our site", url="https://example.com/")]]
        _, got = await self.reaches_client(rig, rig.manager_sends_buttons(self.chat, "Shall we call you?", rows))
        assert got.text == "Shall we call you?"
        buttons = [button for row in got.buttons for button in row]
        assert [button.text for button in buttons] == ["Yes", "No", "Our site"]
        assert buttons[2].url == "https://example.com/"
        await self._press_comes_back(rig, buttons[0].callback_data or "Yes", "Yes")

    @needs(Capability.list_messages)
    async def test_list_messages_reach_the_client_and_choices_come_back(self, rig: ConnectorRig) -> None:
        await self.client_says(rig)
        menu = ListMessage(
            body="Choose a delivery slot",
            button="Slots",
            sections=(
                ListSection(
                    title="Tomorrow",
                    rows=(
                        ListRow(callback_data="slot-am", title="Morning", description="9-12"),
                        ListRow(callback_data="slot-pm", title="Afternoon"),
                    ),
                ),
            ),
        )
        _, got = await self.reaches_client(rig, rig.manager_sends_list(self.chat, menu))
        assert got.list_message is not None, f"the client got a {got.kind!r} message, not a list"
        rows = [row for section in got.list_message.sections for row in section.rows]
        assert [row.title for row in rows] == ["Morning", "Afternoon"]
        await self._press_comes_back(rig, rows[1].callback_data, "slot-pm")

    # -- templates and the reply window ----------------------------------------------------------

    TEMPLATE: ClassVar[Template] = Template(
        id="7",
        content="Hello, {{name}}! Your order {{order}} is ready.",
        external_id="order_ready",
        params=(TemplateParam(key="{{name}}", value="Ann"), TemplateParam(key="{{order}}", value="42")),
    )
    """The template the tests send."""

    def assert_template(self, got: ReceivedMessage) -> None:
        """``got`` is :attr:`TEMPLATE` as the messenger shows it: by name and values, or as its text."""
        by_name = (got.template, tuple(got.template_params)) == ("order_ready", ("Ann", "42"))
        assert by_name or got.text == "Hello, Ann! Your order 42 is ready.", f"not the template: {got!r}"

    @needs(Capability.templates)
    async def test_templates_reach_the_client(self, rig: ConnectorRig) -> None:
        await self.client_says(rig)
        _, got = await self.reaches_client(rig, rig.manager_sends_template(self.chat, self.TEMPLATE))
        self.assert_template(got)

    @needs(Capability.time_window)
    async def test_free_text_fails_once_the_reply_window_closes(self, rig: ConnectorRig) -> None:
        await self.client_says(rig)
        await self.reaches_client(rig, rig.manager_writes(self.chat, "Inside the window"))
        window = rig.adapter.reply_window
        assert window is not None
        await rig.backdate_client(self.chat, window + 60)
        before = len(rig.fake.received(self.chat))
        emitted = await rig.manager_writes(self.chat, "Too late")
        (status,) = await rig.statuses(emitted.message_id or "")
        assert (status.delivery_status, status.error_code) == (-1, 905)
        assert "reply window" in (status.error or "")
        assert len(rig.fake.received(self.chat)) == before

    @needs(Capability.time_window, Capability.templates)
    async def test_templates_go_when_the_reply_window_is_closed(self, rig: ConnectorRig) -> None:
        await self.client_says(rig)
        window = rig.adapter.reply_window
        assert window is not None
        await rig.backdate_client(self.chat, window + 60)
        _, got = await self.reaches_client(rig, rig.manager_sends_template(self.chat, self.TEMPLATE))
        self.assert_template(got)

    # -- writing first ---------------------------------------------------------------------------

    def _first_words(self, rig: ConnectorRig, phone: str) -> Any:
        capabilities = rig.adapter.capabilities
        if Capability.time_window not in capabilities:
            return rig.manager_writes_first(phone, "Hello, this is your store")
        if Capability.templates not in capabilities:
            pytest.skip(f"{rig.messenger} has a reply window but no templates, so a manager cannot write first")
        return rig.manager_writes_first(phone, template=self.TEMPLATE)

    @needs(Capability.write_first)
    async def test_manager_writes_first_and_the_answer_joins_the_chat(self, rig: ConnectorRig) -> None:
        chat = rig.fake.register_phone(self.phone)
        emitted, got = await self.reaches_client(rig, self._first_words(rig, self.phone), chat=chat)
        assert got.message_id
        await rig.fake.client_writes(chat, "Oh, hello")
        (answer,) = await rig.arrived(chat)
        assert answer.chat_id == emitted.chat_id, "the client's answer opened another amoCRM chat"

    @needs(Capability.write_first)
    async def test_writing_first_to_an_unknown_phone_fails_readably(self, rig: ConnectorRig) -> None:
        emitted = await self._first_words(rig, self.unknown_phone)
        (status,) = await rig.statuses(emitted.message_id or "")
        assert status.delivery_status == -1
        assert status.error, "the manager needs to read why"

    # -- comments --------------------------------------------------------------------------------

    @needs(Capability.comments)
    async def test_comments_reach_amocrm_and_answers_go_public(self, rig: ConnectorRig) -> None:
        await rig.fake.client_comments(self.chat, self.post_id, "How much is it?")
        (comment,) = await rig.arrived(self.chat)
        assert comment.text == "How much is it?"
        assert isinstance(comment.content, wire.MessageContent)
        assert comment.content.post is not None
        assert comment.content.post.id == self.post_id
        emitted = await rig.manager_replies_to_comment(self.chat, self.post_id, "10 USD")
        stored = rig.amojo.message(emitted.message_id or "")

        def outcome() -> Sequence[str] | wire.DeliveryStatusRequest | None:
            failed = [s for s in stored.statuses if s.delivery_status == -1]
            return failed[-1] if failed else list(rig.fake.received_comment_replies(self.post_id)) or None

        answered = await rig.eventually(outcome)
        if isinstance(answered, wire.DeliveryStatusRequest):
            pytest.fail(f"the answer failed: error {answered.error_code}: {answered.error}")
        assert answered == ["10 USD"]

    # -- echoes: the business writes outside amoCRM ------------------------------------------------

    async def business_says(self, rig: ConnectorRig, text: str, reply_to: str | None = None) -> StoredMessage:
        """The business answers in the messenger's own app; amoCRM's record of it."""
        before = len(rig.amojo.messages_in(rig.conversation(self.chat)))
        await rig.fake.business_writes(self.chat, text, reply_to=reply_to)
        found: list[StoredMessage] = await rig.eventually(
            lambda: len(got := rig.amojo.messages_in(rig.conversation(self.chat))) > before and got
        )
        return found[-1]

    @needs(Capability.echoes)
    async def test_business_messages_reach_amocrm_as_the_channel_bot(self, rig: ConnectorRig) -> None:
        question = await self.client_says(rig, "Do you deliver on Sundays?")
        answer = await self.business_says(rig, "Yes, from 10 to 18")
        assert answer.text == "Yes, from 10 to 18"
        assert answer.sender_id == rig.amojo.bot_id, "the business's own message goes as the channel bot"
        assert not answer.from_client
        assert answer.receiver_id == question.sender_id
        assert answer.chat_id == question.chat_id
        assert answer.silent, "an imported business message must not notify managers"
        assert await rig.messenger_id(answer.id), "the id mapping is recorded (quotes, edits and statuses need it)"

    @needs(Capability.echoes, Capability.replies)
    async def test_a_client_quoting_a_business_message_quotes_it_in_amocrm(self, rig: ConnectorRig) -> None:
        await self.client_says(rig)
        answer = await self.business_says(rig, "Our address: 1 Main St")
        await rig.fake.client_writes(self.chat, "On my way", reply_to=await rig.messenger_id(answer.id))
        quote = (await rig.arrived(self.chat, 2))[-1]
        assert quote.payload is not None
        assert quote.payload.reply_to is not None, "the quote did not reach amoCRM"
        assert quote.payload.reply_to.message.id == answer.id

    @needs(Capability.echoes)
    async def test_manager_replies_do_not_come_back_as_business_messages(self, rig: ConnectorRig) -> None:
        await self.client_says(rig)
        await self.reaches_client(rig, rig.manager_writes(self.chat, "Hello from amoCRM"))
        # Inbound events of a chat run in order: once this one is in, any echo of the reply was handled.
        await self.business_says(rig, "A marker from the app")
        texts = [(m.text, m.from_manager) for m in rig.amojo.messages_in(rig.conversation(self.chat))]
        assert texts == [
            ("Hello, is anyone there?", False),
            ("Hello from amoCRM", True),
            ("A marker from the app", False),
        ], "the manager's reply came back from the messenger as a business message"
