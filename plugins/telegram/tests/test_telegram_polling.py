"""Long polling: offsets kept in the state and moved only once events are stored, and 409 handled."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
from amoconnect.buttondata import MemoryButtonRows
from amoconnect.model import Button, InboundEvent, InboundMessage, OutgoingMessage
from amoconnect.testing.kit import eventually
from structlog.testing import capture_logs
from telegram_rig import MemoryState, Rig, running

from amoconnect_telegram.fake import FakeTelegram

pytestmark = pytest.mark.anyio

MakeAdapter = Callable[..., Rig]


def polling(make_adapter: MakeAdapter, **options: object) -> Rig:
    rig = make_adapter(mode="polling", polling_timeout=1, public_url=None, **options)
    rig.adapter.retry_pause = 0.01  # type: ignore[misc]
    return rig


def texts(events: Sequence[InboundEvent]) -> list[str]:
    return [e.text for e in events if isinstance(e, InboundMessage)]


async def test_updates_are_submitted_and_the_offset_kept(make_adapter: MakeAdapter, fake: FakeTelegram) -> None:
    rig = polling(make_adapter)
    await rig.adapter.startup()
    chat = fake.add_client()
    await fake.client_writes(chat, "one")
    async with running(rig.adapter):
        await eventually(lambda: texts(rig.submitted) == ["one"])
        await fake.client_writes(chat, "two")
        await eventually(lambda: texts(rig.submitted) == ["one", "two"])
        await eventually(lambda: rig.state.data.get("offset") == str(fake.updates[-1]["update_id"] + 1).encode())
    assert all(call.params.get("allowed_updates") for call in fake.calls_to("getUpdates"))
    # a restart with the same state starts after what was stored
    await fake.client_writes(chat, "three")
    again = polling(make_adapter, state=rig.state)
    async with running(again.adapter):
        await eventually(lambda: texts(again.submitted) == ["three"])


async def test_the_offset_moves_only_after_submit_returned(make_adapter: MakeAdapter, fake: FakeTelegram) -> None:
    stored: list[InboundEvent] = []
    failures = [RuntimeError("store is busy")]

    async def submit(events: Sequence[InboundEvent]) -> None:
        if failures:
            raise failures.pop()
        stored.extend(events)

    rig = polling(make_adapter, submit=submit, state=MemoryState())
    chat = fake.add_client()
    await fake.client_writes(chat, "durable")
    async with running(rig.adapter):
        await eventually(lambda: texts(stored) == ["durable"])
    offsets = [call.params.get("offset") for call in fake.calls_to("getUpdates")]
    assert offsets[:2] == [None, None]  # the failed batch was fetched again, not confirmed


async def test_409_conflict_is_logged_clearly_and_polling_goes_on(
    make_adapter: MakeAdapter, fake: FakeTelegram
) -> None:
    fake.webhook_url = "http://someone-else.example/hook"
    with capture_logs() as logs:
        rig = polling(make_adapter)
        chat = fake.add_client()
        async with running(rig.adapter):
            await eventually(lambda: any("409 Conflict" in entry["event"] for entry in logs))
            fake.webhook_url = ""
            await fake.client_writes(chat, "after the conflict")
            await eventually(lambda: texts(rig.submitted) == ["after the conflict"])
    conflict = next(entry for entry in logs if "409 Conflict" in entry["event"])
    assert conflict["log_level"] == "error"
    assert "webhook" in conflict["event"]


async def test_button_presses_are_answered_while_polling(make_adapter: MakeAdapter, fake: FakeTelegram) -> None:
    rig = polling(make_adapter)
    chat = fake.add_client()
    result = await rig.adapter.send_message(
        OutgoingMessage(chat=str(chat), text="Rate us", buttons=((Button(text="5 stars", callback_data="5"),),))
    )
    async with running(rig.adapter):
        await fake.client_presses(chat, int(result.message_ids[0]), "5")
        await eventually(lambda: texts(rig.submitted) == ["5 stars"])
        await eventually(lambda: len(fake.answered_callbacks) == 1)


async def test_long_button_data_comes_back_whole_while_polling_and_an_expired_key_is_told(
    make_adapter: MakeAdapter, fake: FakeTelegram
) -> None:
    rig = polling(make_adapter, expired_button_text="Кнопка устарела")
    chat = fake.add_client()
    long = "Да, записаться на " + "понедельник " * 8
    result = await rig.adapter.send_message(
        OutgoingMessage(chat=str(chat), text="Когда?", buttons=((Button(text="Пн", callback_data=long),),))
    )
    (sent,) = fake.sent_to(chat)
    key = sent.buttons[0][0]["callback_data"]
    assert len(key.encode()) <= 64
    async with running(rig.adapter):
        await fake.client_presses(chat, int(result.message_ids[0]), key)
        await eventually(lambda: [getattr(e, "callback_data", None) for e in rig.submitted] == [long])
        rows = rig.adapter.context.button_data.rows
        assert isinstance(rows, MemoryButtonRows)
        rows.values.clear()  # the key's time ran out
        press = await fake.client_presses(chat, int(result.message_ids[0]), key)
        assert press is not None
        await eventually(lambda: fake.callback_answers.get(press["callback_query"]["id"]) == "Кнопка устарела")
        assert len(rig.submitted) == 1
