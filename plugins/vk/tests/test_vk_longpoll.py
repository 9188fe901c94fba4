"""Bots Long Poll: server, key and ts kept in the state, ``failed`` 1/2/3 handled; VK's request rate kept."""

from __future__ import annotations

from collections.abc import Callable

import anyio
import msgspec
import pytest
from amoconnect.model import InboundMessage, OutgoingTyping
from amoconnect.testing.kit import eventually
from vk_rig import MemoryState, Rig, running

from amoconnect_vk.adapter import LongPollServer, VKAdapter
from amoconnect_vk.fake import FakeVK

pytestmark = pytest.mark.anyio


def texts(rig: Rig) -> list[str]:
    return [event.text for event in rig.submitted if isinstance(event, InboundMessage)]


def stored(rig: Rig) -> LongPollServer:
    return msgspec.json.decode(rig.state.data["longpoll"], type=LongPollServer)


async def polling(fake: FakeVK) -> None:
    before = len(fake.calls_to("groups.getLongPollServer"))
    await eventually(lambda: len(fake.calls_to("groups.getLongPollServer")) > before)
    await anyio.sleep(0.05)  # the first a_check is on its way


async def test_long_poll_with_setup_and_failures(make_adapter: Callable[..., Rig], fake: FakeVK) -> None:
    rig = make_adapter(mode="longpoll", secret="", configure=True, longpoll_wait=1)
    await rig.adapter.startup()
    assert fake.longpoll_enabled and {"message_new", "wall_reply_new"} <= fake.longpoll_events
    async with running(rig.adapter):
        await polling(fake)
        await fake.client_writes(1, "one")
        await eventually(lambda: texts(rig) == ["one"])
        await eventually(lambda: stored(rig).ts == "1")
        fake.expire_longpoll_key()  # failed 2: a new key, the same ts, nothing lost
        await fake.client_writes(1, "two")
        await eventually(lambda: texts(rig) == ["one", "two"])
        fake.lose_longpoll_history()  # failed 3: a new key and ts
        await polling(fake)
        await fake.client_writes(1, "three")
        await eventually(lambda: texts(rig) == ["one", "two", "three"])
    assert stored(rig).key == fake.longpoll_key


async def test_a_restart_goes_on_from_the_stored_ts(make_adapter: Callable[..., Rig], fake: FakeVK) -> None:
    state = MemoryState()
    fake.longpoll_enabled, fake.longpoll_events = True, {"message_new"}
    rig = make_adapter(mode="longpoll", secret="", state=state, longpoll_wait=1)
    async with running(rig.adapter):
        await polling(fake)
        await fake.client_writes(2, "before")
        await eventually(lambda: texts(rig) == ["before"])
    await fake.client_writes(2, "while away")
    again = make_adapter(mode="longpoll", secret="", state=state, longpoll_wait=1)
    async with running(again.adapter):
        await eventually(lambda: texts(again) == ["while away"])


async def test_an_outdated_ts_goes_on_from_vks(make_adapter: Callable[..., Rig], fake: FakeVK) -> None:
    state = MemoryState()
    fake.longpoll_enabled, fake.longpoll_events = True, {"message_new"}
    await state.set("longpoll", msgspec.json.encode(LongPollServer(server="http://api.vk.test/lp/1", key="", ts="-5")))
    rig = make_adapter(mode="longpoll", secret="", state=state, longpoll_wait=1)
    async with running(rig.adapter):
        await eventually(lambda: stored(rig).ts == "0")  # failed 1 gave the current ts
        await fake.client_writes(3, "now")
        await eventually(lambda: texts(rig) == ["now"])


async def test_long_poll_disabled_is_retried(make_adapter: Callable[..., Rig], fake: FakeVK) -> None:
    rig = make_adapter(mode="longpoll", secret="", longpoll_wait=1)
    async with running(rig.adapter):
        await eventually(lambda: len(fake.calls_to("groups.getLongPollServer")) >= 2)
        fake.longpoll_enabled, fake.longpoll_events = True, {"message_new"}
        await polling(fake)
        await fake.client_writes(4, "finally")
        await eventually(lambda: texts(rig) == ["finally"])


async def test_twenty_requests_a_second(
    make_adapter: Callable[..., Rig], fake: FakeVK, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(VKAdapter, "api_rate", 20.0)
    rig = make_adapter()
    await fake.client_writes(6, "hi")
    fake.max_rps = 20
    async with anyio.create_task_group() as tasks:
        for _ in range(24):
            tasks.start_soon(rig.adapter.send_typing, OutgoingTyping(chat="6", until=0))
    assert fake.received_typing(6) == 24
    assert not [call for call in fake.calls if call.error == 6]
