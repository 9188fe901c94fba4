from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
import tomli_w
from click.testing import CliRunner
from rig import ACCOUNT, CHANNEL, SECRET, base_config

from amoconnect.cli import main
from amoconnect.history import HistoryEntry
from amoconnect.model import Person
from amoconnect.testing.fake_amojo import FakeAmojo
from amoconnect.testing.servers import serve_app

pytestmark = pytest.mark.anyio
BOT = "b0b0b0b0-0000-4000-8000-000000000001"


def entries() -> list[HistoryEntry]:
    ann, bob = Person(id="ann", name="Ann", phone="+79990000001"), Person(id="bob", name="Bob")
    return [
        HistoryEntry(
            instance="lb", chat="ann", message_id="3", timestamp=1_700_000_300, direction="in", client=ann, text="third"
        ),
        HistoryEntry(
            instance="lb", chat="ann", message_id="1", timestamp=1_700_000_100, direction="in", client=ann, text="first"
        ),
        HistoryEntry(
            instance="lb",
            chat="ann",
            message_id="2",
            timestamp=1_700_000_200,
            direction="out",
            client=ann,
            text="second, from us",
        ),
        HistoryEntry(
            instance="lb",
            chat="bob",
            message_id="1",
            timestamp=1_700_000_000,
            direction="in",
            client=bob,
            text="only one",
            media_url="https://files.test/a.pdf",
            file_name="a.pdf",
            file_size=10,
        ),
    ]


async def cli(*args: str) -> Any:
    runner = CliRunner()
    return await anyio.to_thread.run_sync(lambda: runner.invoke(main, list(args)))


async def test_import_is_ordered_silent_but_the_newest_and_idempotent(tmp_path: Path) -> None:
    fake = FakeAmojo(CHANNEL, SECRET, bot_id=BOT)
    fake.connect(ACCOUNT)
    history = tmp_path / "history.jsonl"
    history.write_bytes(b"\n".join(msgspec.json.encode(e) for e in entries()) + b"\n")
    async with serve_app(fake.app) as url:
        data = base_config(tmp_path, channel={"amojo_url": url, "bot_id": BOT})
        config = tmp_path / "amoconnect.toml"
        config.write_text(tomli_w.dumps(data))
        result = await cli("import", "--config", str(config), "--file", str(history))
        assert result.exit_code == 0, result.output
        assert "2 conversation(s): 4 message(s) sent, 0 already in amoCRM" in result.output
        again = await cli("import", "--config", str(config), "--file", str(history))
        assert "4 message(s)" not in again.output
        assert "0 message(s) sent, 4 already in amoCRM" in again.output
    ann = fake.messages_in("lb:ann")
    assert [m.text for m in ann] == ["first", "second, from us", "third"]
    assert [m.silent for m in ann] == [True, True, False]
    assert ann[1].payload is not None
    assert ann[1].payload.sender.ref_id == BOT
    (bob,) = fake.messages_in("lb:bob")
    assert bob.silent is False
    assert bob.type == "file"


async def test_a_bad_line_is_named(tmp_path: Path) -> None:
    history = tmp_path / "history.jsonl"
    history.write_text('{"instance": "lb"}\n')
    config = tmp_path / "amoconnect.toml"
    config.write_text(tomli_w.dumps(base_config(tmp_path)))
    result = await cli("import", "--config", str(config), "--file", str(history))
    assert result.exit_code == 1
    assert "history.jsonl:1: Object missing required field" in result.output
