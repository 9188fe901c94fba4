"""Long button data under short keys: what goes on a button, and what a press gives back."""

from __future__ import annotations

from pathlib import Path

import pytest

from amoconnect.buttondata import KEY_LENGTH, KEY_PREFIX, RETENTION, ButtonData, MemoryButtonRows, key_of
from amoconnect.model import Button, InboundMessage, ListMessage, ListRow, ListSection, OutgoingMessage, Person
from amoconnect.store.base import Store
from amoconnect.store.sqlite import SQLiteStore

pytestmark = pytest.mark.anyio


def fits_64_bytes(value: str) -> bool:
    return 1 <= len(value.encode()) <= 64


class CountingRows(MemoryButtonRows):
    def __init__(self) -> None:
        super().__init__()
        self.puts: list[tuple[str, float]] = []

    async def put_button_data(self, key: str, value: str, keep_for: float) -> None:
        self.puts.append((key, keep_for))
        await super().put_button_data(key, value, keep_for)


async def test_a_value_that_fits_goes_as_it_is_without_a_write() -> None:
    rows = CountingRows()
    data = ButtonData(rows)
    assert await data.shorten("Delivery", fits_64_bytes) == "Delivery"
    assert await data.resolve("Delivery") == "Delivery"
    assert rows.puts == []


async def test_values_sharing_a_long_prefix_get_different_keys_that_give_them_back() -> None:
    rows = CountingRows()
    data = ButtonData(rows)
    first, second = "x" * 64 + "-1", "x" * 64 + "-12"
    keys = [await data.shorten(value, fits_64_bytes) for value in (first, second)]
    assert keys[0] != keys[1]
    assert all(k.startswith(KEY_PREFIX) and len(k) == len(k.encode()) == KEY_LENGTH for k in keys)
    assert [await data.resolve(k) for k in keys] == [first, second]
    assert await data.shorten(first, fits_64_bytes) == keys[0] == key_of(first)  # the same value, the same key
    assert [keep_for for _, keep_for in rows.puts] == [RETENTION] * 3


async def test_a_short_value_that_looks_like_a_key_is_kept_under_one() -> None:
    data = ButtonData()
    looks_like_a_key = KEY_PREFIX + "not-a-key"
    key = await data.shorten(looks_like_a_key, fits_64_bytes)
    assert key != looks_like_a_key and await data.resolve(key) == looks_like_a_key


async def test_an_unknown_or_expired_key_resolves_to_none(tmp_path: Path) -> None:
    assert await ButtonData().resolve(KEY_PREFIX + "A" * 22) is None
    store: Store
    async with SQLiteStore(tmp_path / "s.sqlite3") as store:
        data = ButtonData(store, retention=-1)  # every value's time has already run out
        key = await data.shorten("é" * 40, fits_64_bytes)
        assert await data.resolve(key) is None
        kept = await ButtonData(store).shorten("é" * 40, fits_64_bytes)
        assert kept == key and await ButtonData(store).resolve(key) == "é" * 40


async def test_keyed_puts_long_button_text_and_row_data_under_keys_and_leaves_the_rest() -> None:
    data = ButtonData()
    long_text = "Записаться на приём " * 4
    message = OutgoingMessage(
        chat="1",
        buttons=(
            (
                Button(text=long_text),
                Button(text="Yes"),
                Button(text="Empty", callback_data=""),
                Button(text="Site" * 30, url="https://x.test"),
            ),
        ),
        list_message=ListMessage(
            body="b", button="m", sections=(ListSection(title="", rows=(ListRow(callback_data="r" * 70, title="R"),)),)
        ),
    )
    keyed = await data.keyed(message, fits_64_bytes)
    long_button, yes, empty, site = keyed.buttons[0]
    assert long_button.callback_data == key_of(long_text) and long_button.text == long_text
    assert (yes, empty, site) == message.buttons[0][1:]
    assert keyed.list_message is not None
    assert keyed.list_message.sections[0].rows[0].callback_data == key_of("r" * 70)
    assert await data.keyed(OutgoingMessage(chat="1", text="no buttons"), fits_64_bytes) == OutgoingMessage(
        chat="1", text="no buttons"
    )


async def test_resolved_gives_presses_their_data_and_an_expired_key_none() -> None:
    data = ButtonData()
    key = await data.shorten("v" * 70, fits_64_bytes)

    def press(callback_data: str | None) -> InboundMessage:
        sender = Person(id="u")
        return InboundMessage(
            chat="1",
            timestamp=1.0,
            dedup_key=callback_data or "-",
            sender=sender,
            message_id="m",
            text="Pick",
            callback_data=callback_data,
        )

    events = [press(key), press("plain"), press(None), press(KEY_PREFIX + "gone" * 5)]
    assert [getattr(e, "callback_data", None) for e in await data.resolved(events)] == ["v" * 70, "plain", None, None]
