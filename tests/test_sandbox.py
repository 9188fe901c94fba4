from __future__ import annotations

import contextlib
import functools
import os
import re
import socket

import anyio
import httpx
import pytest
import structlog

from amoconnect.errors import PluginError
from amoconnect.sandbox import can_open_browser, run_sandbox

pytestmark = pytest.mark.anyio


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_sandbox_shows_a_conversation_crossing_both_ways() -> None:
    with structlog.testing.capture_logs() as logs:
        await run_sandbox("fake", port=free_port(), rounds=2, interval=0)
    events = [entry["event"] for entry in logs]
    assert events.count("2. amoCRM received it") == 2
    assert events.count("4. the client got the answer in the messenger") == 2
    # fakechat reports receipts, as README's quick start shows for Telegram: the client's messenger
    # reports each answer delivered and read, and amoCRM shows it read (delivery_status 2)
    shown = [entry["delivery_status"] for entry in logs if entry["event"] == "5. amoCRM shows the delivery status"]
    assert shown == [2, 2]
    assert not [entry for entry in logs if entry["log_level"] in ("error", "warning")]


async def test_sandbox_needs_a_plugin_with_a_fake() -> None:
    with pytest.raises(PluginError, match="plugin 'nosuch' is not installed"):
        await run_sandbox("nosuch", port=free_port(), rounds=1)


async def test_the_sandbox_page_refuses_what_it_cannot_send() -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}/console/sandbox"
    with structlog.testing.capture_logs() as logs:
        async with anyio.create_task_group() as tg:
            tg.start_soon(functools.partial(run_sandbox, "fake", port=port, open_browser=False))
            async with httpx.AsyncClient(timeout=5) as http:
                page = None
                with anyio.fail_after(15):
                    while page is None or page.status_code != 200:
                        await anyio.sleep(0.1)
                        with contextlib.suppress(httpx.TransportError):
                            page = await http.get(base)
                assert "script-src 'self'" in page.headers["content-security-policy"]
                match = re.search(r'name="csrf" value="([^"]+)"', page.text)
                assert match is not None
                csrf, json_accept = match.group(1), {"Accept": "application/json"}

                async def say(side: str, text: str, token: str = csrf) -> httpx.Response:
                    return await http.post(f"{base}/{side}", data={"csrf": token, "text": text}, headers=json_accept)

                refused = await say("manager", "too early")  # amoCRM has no chat before the client writes
                assert refused.status_code == 400 and "client writes first" in refused.json()["error"]
                assert (await say("client", "")).status_code == 400
                assert (await say("client", "x" * 4001)).json()["error"] == "A message holds at most 4000 characters."
                assert (await say("client", "forged", token="not-the-token")).status_code == 403
                state = (await http.get(f"{base}/state")).json()
                assert state == {"messenger": [], "amocrm": [], "can_answer": False}  # nothing went out
                # without script, a form posts and the page comes back
                sent = await http.post(f"{base}/client", data={"csrf": csrf, "text": "<i>hi</i>"})
                assert sent.status_code == 303 and sent.headers["location"] == "/console/sandbox"
                with anyio.fail_after(10):
                    while not state["can_answer"]:
                        await anyio.sleep(0.05)
                        state = (await http.get(f"{base}/state")).json()
                assert state["amocrm"] == [{"who": "client", "text": "<i>hi</i>", "status": "received", "error": ""}]
                assert (await say("manager", "hello")).json() == {"ok": True, "error": ""}
                shown = (await http.get(base)).text
                assert "&lt;i&gt;hi&lt;/i&gt;" in shown and "<i>hi</i>" not in shown
            tg.cancel_scope.cancel()
    assert any(entry.get("page") == base for entry in logs), [e["event"] for e in logs]


def test_no_browser_is_opened_without_a_person_at_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    class Terminal:
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr("sys.stdin", Terminal())
    monkeypatch.setattr("sys.stdout", Terminal())
    monkeypatch.setattr("sys.platform", "linux")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert not can_open_browser()  # a server over SSH: no display
    monkeypatch.setenv("DISPLAY", ":0")
    assert can_open_browser()
    with open(os.devnull) as nothing:  # CI: no terminal
        monkeypatch.setattr("sys.stdin", nothing)
        assert not can_open_browser()
