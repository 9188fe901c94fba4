"""The commands that talk to amoCRM, against the fake amojo served on a real loopback port."""

from __future__ import annotations

import json
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import tomli_w
from click.testing import CliRunner
from rig import ACCOUNT, CHANNEL, SCOPE, SECRET, base_config

from amoconnect.cli import main
from amoconnect.history import read_history
from amoconnect.testing.fake_amojo import FakeAmojo
from amoconnect.testing.servers import serve_app

ROOT = Path(__file__).parent.parent


class Served:
    """The fake amojo on a loopback port, in a thread of its own (the command runs its own event loop)."""

    def __init__(self) -> None:
        self.fake = FakeAmojo(CHANNEL, SECRET, bot_id="b0000000-0000-0000-0000-000000000000")
        self.url = ""
        self._up = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=anyio.run, args=(self._serve,), daemon=True)

    async def _serve(self) -> None:
        async with serve_app(self.fake.app) as url:
            self.url = url
            self._up.set()
            await anyio.to_thread.run_sync(self._stop.wait)

    def __enter__(self) -> Served:
        self._thread.start()
        assert self._up.wait(10), "the fake amojo did not start"
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(10)


@pytest.fixture
def amojo() -> Iterator[Served]:
    with Served() as served:
        yield served


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_config(tmp_path: Path, amojo_url: str, **overrides: Any) -> Path:
    data = base_config(tmp_path, **overrides)
    data["channel"].update(amojo_url=amojo_url, bot_id="b0000000-0000-0000-0000-000000000000")
    data["sources"] = [
        {"name": "support-bot", "plugin": "fake", "account": "main", "settings": {"token": "t", "secret": "s"}}
    ]
    data["http"] = {"attempts": 1, "transport": "httpx"}
    path = tmp_path / "amoconnect.toml"
    path.write_text(tomli_w.dumps(data))
    return path


def test_connect_json_prints_each_scope_id(amojo: Served, tmp_path: Path) -> None:
    config = write_config(tmp_path, amojo.url)
    result = CliRunner().invoke(main, ["connect", "--config", str(config), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == [{"account": "main", "scope_id": SCOPE, "configured_scope_id": SCOPE}]
    assert amojo.fake.connections[SCOPE].connected


def test_check_says_in_plain_words_what_it_probed(amojo: Served, tmp_path: Path) -> None:
    config = write_config(tmp_path, amojo.url)
    result = CliRunner().invoke(main, ["check", "--config", str(config), "--json"])
    assert json.loads(result.output)["problems"] == [
        f"account 'main': amojo at {amojo.url} does not know scope {SCOPE!r}: run amoconnect connect"
    ]
    amojo.fake.connect(ACCOUNT)
    result = CliRunner().invoke(main, ["check", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert result.output == f"{config}: ok\n"


def test_check_names_the_url_it_could_not_reach(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    config = write_config(tmp_path, url)
    result = CliRunner().invoke(main, ["check", "--config", str(config), "--json"])
    (problem,) = json.loads(result.output)["problems"]
    assert problem.startswith(
        f"account 'main': amojo at {url} did not answer a signed request for a chat's history "
        "(it proves channel.secret and the account's scope): ConnectError"
    )
    assert "failed after" not in problem


def test_a_network_error_names_the_url_and_secrets_stay_out_of_every_line(tmp_path: Path) -> None:
    # A secret in a URL (as a Telegram bot token is): neither the error nor the log lines show it.
    url = f"http://127.0.0.1:{closed_port()}/{SECRET}"
    config = write_config(tmp_path, url)
    text = config.read_text().replace("attempts = 1", "attempts = 2")
    config.write_text(text)
    result = CliRunner().invoke(main, ["connect", "--config", str(config), "--log-format", "json"])
    assert result.exit_code == 1
    assert SECRET not in result.output and SECRET not in result.stderr
    error = result.stderr.splitlines()[-1]
    assert re.fullmatch(
        rf"Error: amojo connect failed after 2 attempts: ConnectError: .* "
        rf"\(POST http://127\.0\.0\.1:\d+/\[redacted\]/v2/origin/custom/{CHANNEL}/connect\)",
        error,
    ), error
    (retrying,) = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert retrying["event"] == "retrying"
    assert retrying["level"] == "warning"
    assert retrying["host"] == url.split("/")[2]


def _documented_example(tmp_path: Path) -> Path:
    docs = (ROOT / "docs" / "cli.md").read_text()
    block = docs.split("## History import", 1)[1].split("```json\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "history.jsonl"
    path.write_text(block)
    return path


def test_import_json_of_the_documented_example_twice(amojo: Served, tmp_path: Path) -> None:
    amojo.fake.connect(ACCOUNT)
    config = write_config(tmp_path, amojo.url)
    history = _documented_example(tmp_path)
    assert len(read_history(history)) == 4
    first = CliRunner().invoke(main, ["import", "--config", str(config), "--file", str(history), "--json"])
    assert first.exit_code == 0, first.output
    assert json.loads(first.output) == {"conversations": 2, "sent": 4, "already_there": 0}
    again = CliRunner().invoke(main, ["import", "--config", str(config), "--file", str(history), "--json"])
    assert json.loads(again.output) == {"conversations": 2, "sent": 0, "already_there": 4}
    assert [m.text for m in amojo.fake.messages_in("support-bot:5550001")] == ["Thanks!"]


def test_import_help_points_to_a_section_that_exists() -> None:
    help_text = CliRunner().invoke(main, ["import", "-h"]).output
    assert "docs/cli.md, 'History import'" in " ".join(help_text.split())
    assert "\n## History import\n" in (ROOT / "docs" / "cli.md").read_text()


def _retrying_config(tmp_path: Path, **top: Any) -> Path:
    config = write_config(tmp_path, f"http://127.0.0.1:{closed_port()}")
    text = config.read_text().replace("attempts = 1", "attempts = 2")
    config.write_text("".join(f'{key} = "{value}"\n' for key, value in top.items()) + text)
    return config


@pytest.mark.parametrize(
    ("file_level", "options", "shown"),
    [
        (None, [], True),
        ("error", [], False),  # the file's log_level holds for every command, not only run
        ("error", ["--log-level", "warning"], True),  # the command line wins
        (None, ["--log-level", "error"], False),
    ],
)
def test_every_command_logs_at_the_chosen_level(
    tmp_path: Path, file_level: str | None, options: list[str], shown: bool
) -> None:
    config = _retrying_config(tmp_path, **({"log_level": file_level} if file_level else {}))
    result = CliRunner().invoke(main, ["--log-format", "json", "connect", "--config", str(config), *options])
    assert result.exit_code == 1
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert [line["event"] for line in lines] == (["retrying"] if shown else [])


def test_console_lines_fit_a_terminal(tmp_path: Path) -> None:
    config = _retrying_config(tmp_path)
    result = CliRunner().invoke(main, ["connect", "--config", str(config), "--log-format", "console"])
    (line,) = [line for line in result.stderr.splitlines() if "retrying" in line]
    assert re.match(r"\d\d:\d\d:\d\d \[warning\] retrying +", line), line
    assert CHANNEL not in line  # the URL's ids are cut short
    problem = re.search(r"problem='([^']*)'", line)
    assert problem is not None
    assert len(line) - len(problem.group(1)) <= 120  # the error's own text aside, the context is short
