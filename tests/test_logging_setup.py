"""The logging set-up every command shares: console lines for a person, JSON lines for a collector."""

from __future__ import annotations

import io
import json
import logging
import re
import sys
from typing import Any

import pytest
import structlog

import amoconnect.logging
from amoconnect.logging import configure, name_account

CHANNEL = "ef7f4798-c376-48fa-984b-c3835ecf0677"
ACCOUNT = "e504e6cb-3a51-4e05-827f-01b42411fc07"
SCOPE = f"{CHANNEL}_{ACCOUNT}"
OTHER = "a1b2c3d4-0000-4000-8000-000000000000_b1b2c3d4-0000-4000-8000-000000000000"
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@pytest.fixture(autouse=True)
def _restore(monkeypatch: pytest.MonkeyPatch) -> object:
    previous = structlog.get_config()
    monkeypatch.setattr(amoconnect.logging, "_account_names", {})
    yield None
    structlog.configure(**previous)


def _relay_lines(accounts: dict[str, str], json_lines: bool, capsys: pytest.CaptureFixture[str]) -> list[str]:
    for scope_id, name in accounts.items():
        name_account(scope_id, name)
    configure(level="debug", json=json_lines, secrets=["a-secret-token"])
    job = structlog.get_logger("amoconnect.relay").bind(
        job=12, kind="amocrm", scope_id=SCOPE, key=f"{SCOPE}|b2ae2088-d949-4670-9297-e8cbae2a9084", attempt=1
    )
    job.info(
        "relayed to messenger",
        amocrm_id="7e9a9659-0d6d-444f-88ef-182963be719a",
        chat="182736455",
        instance="support-bot",
        messenger_ids=["2"],
        duplicate=False,
    )
    job.bind(attempt=3).warning("job will be retried", error="HTTP 503 for a-secret-token", retry_in_s=2.5)
    logging.getLogger("a.library").warning("refused a-secret-token")
    return capsys.readouterr().err.splitlines()


def test_console_lines_are_short_and_keep_what_a_person_needs(capsys: pytest.CaptureFixture[str]) -> None:
    info, warning, stdlib = _relay_lines({SCOPE: "main"}, False, capsys)
    for line in (info, warning, stdlib):
        assert len(line) <= 120, line
        assert not UUID.search(line), line
        assert "a-secret-token" not in line
    assert "relayed to messenger" in info
    assert "amocrm_id=7e9a9659…" in info
    assert "job=" not in info and "attempt" not in info and "account=" not in info  # one account: no need
    assert "duplicate" not in info  # False says nothing to a person
    assert "job=12" in warning and "attempt=3" in warning and "kind=amocrm" in warning
    assert "[redacted]" in warning
    assert re.match(r"\d\d:\d\d:\d\d \[warning\] refused \[redacted\]", stdlib), stdlib


def test_console_lines_name_the_account_when_there_are_several(capsys: pytest.CaptureFixture[str]) -> None:
    info, *_ = _relay_lines({SCOPE: "main", OTHER: "second"}, False, capsys)
    assert "account=main" in info


def test_json_lines_keep_every_field(capsys: pytest.CaptureFixture[str]) -> None:
    info, warning, stdlib = (json.loads(line) for line in _relay_lines({SCOPE: "main"}, True, capsys))
    assert info["scope_id"] == SCOPE
    assert info["key"].startswith(SCOPE)
    assert (info["job"], info["attempt"], info["level"], info["duplicate"]) == (12, 1, "info", False)
    assert info["timestamp"].endswith("Z")
    assert warning["error"] == "HTTP 503 for [redacted]"
    assert stdlib == {
        "event": "refused [redacted]",
        "logger": "a.library",
        "level": "warning",
        "timestamp": stdlib["timestamp"],
    }


def test_the_level_filters(capsys: pytest.CaptureFixture[str]) -> None:
    configure(level="warning", json=True)
    structlog.get_logger("x").info("hidden")
    structlog.get_logger("x").warning("shown")
    assert [json.loads(line)["event"] for line in capsys.readouterr().err.splitlines()] == ["shown"]


def test_json_lines_scrub_secrets_wherever_they_are_and_keep_types(capsys: pytest.CaptureFixture[str]) -> None:
    configure(level="info", json=True, secrets=["a-secret-token"])
    log = structlog.get_logger("x")
    log.info("plain", n=3, ratio=0.5, ok=True, nothing=None, text="Здравствуйте")
    log.info("in a string", url="https://api.test/bota-secret-token/send")
    log.info("in bytes", body=b"token=a-secret-token")
    log.info("nested", answer={"errors": [{"detail": "a-secret-token refused"}]}, error=ValueError("a-secret-token"))
    err = capsys.readouterr().err
    assert "a-secret-token" not in err
    plain, in_string, in_bytes, nested = (json.loads(line) for line in err.splitlines())
    assert (plain["n"], plain["ratio"], plain["ok"], plain["nothing"], plain["text"]) == (
        3,
        0.5,
        True,
        None,
        "Здравствуйте",
    )
    assert in_string["url"] == "https://api.test/bot[redacted]/send"
    assert in_bytes["body"] == "b'token=[redacted]'"
    assert nested["answer"] == {"errors": [{"detail": "[redacted] refused"}]}
    assert nested["error"] == "ValueError: [redacted]"


def test_bound_loggers_share_one_printer_and_write_where_configured(capsys: pytest.CaptureFixture[str]) -> None:
    """A job binds a logger from the module's proxy: each bind no longer makes a printer of its own."""
    configure(level="info", json=True)
    log = structlog.get_logger("amoconnect.relay")
    first, second = log.bind(job=1), log.bind(job=2)
    assert first._logger is second._logger
    first.info("one")
    second.info("two")
    assert [json.loads(line)["job"] for line in capsys.readouterr().err.splitlines()] == [1, 2]
    configure(level="info", json=True)  # configured again: a printer of the new set-up
    assert log.bind(job=3)._logger is not first._logger


def test_a_line_is_one_write_of_an_unbuffered_stderr(monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``PYTHONUNBUFFERED`` (most container images) stderr hands every write to the system:
    ``print`` wrote a line and its end apart, two system calls a line."""

    class Counted(io.BytesIO):
        def __init__(self) -> None:
            super().__init__()
            self.writes: list[bytes] = []

        def write(self, data: Any) -> int:
            self.writes.append(bytes(data))
            return len(data)

    raw = Counted()
    monkeypatch.setattr(sys, "stderr", io.TextIOWrapper(raw, encoding="utf-8", write_through=True))
    configure(level="info", json=True)
    structlog.get_logger("amoconnect.relay").info("relayed", job=1)
    (line,) = raw.writes
    assert line.endswith(b"\n") and json.loads(line)["job"] == 1
