"""``amoconnect run`` as a user starts it: a real process, a real port; and what it asks of :func:`serve`."""

from __future__ import annotations

import contextlib
import gc
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import tomli_w
from click.testing import CliRunner
from processes import free_port, listening
from rig import base_config, eventually

from amoconnect.cli import main
from amoconnect.config import parse_config
from amoconnect.runtime import SWITCH_INTERVAL, Runtime, serve

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@contextlib.contextmanager
def busy_port(port: int = 0) -> Iterator[int]:
    """A port another program listens on (port 8080 may be taken already: then it is busy anyway)."""
    sock = socket.socket()
    try:
        sock.bind(("127.0.0.1", port))
        sock.listen()
    except OSError:
        sock.close()
        yield port
        return
    with sock:
        yield int(sock.getsockname()[1])


def amoconnect(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "amoconnect", *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def test_run_on_a_busy_port_says_so_in_one_line(tmp_path: Path) -> None:
    config = tmp_path / "amoconnect.toml"
    config.write_text(tomli_w.dumps({**base_config(tmp_path), "sources": [], "store": {"path": "store.sqlite3"}}))
    with busy_port() as port:
        result = amoconnect("run", "--config", str(config), "--port", str(port), cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr == (
        f"Error: cannot listen on 127.0.0.1:{port}: the port is in use by another program; "
        "choose another with --port or [server] port\n"
    )
    assert not (tmp_path / "store.sqlite3").exists()  # nothing started


def test_the_sandbox_picks_a_free_port_and_says_which(tmp_path: Path) -> None:
    with busy_port(8080):
        result = amoconnect("run", "--sandbox", "--rounds", "1", "--log-format", "console", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    (ready,) = [line for line in lines if "sandbox: the connector listens" in line]
    port = re.fullmatch(
        r"\d\d:\d\d:\d\d \[info\] sandbox: the connector listens connector=http://127.0.0.1:(\d+)", ready
    )
    assert port is not None, ready
    assert int(port.group(1)) != 8080
    assert any("4. the client got the answer in the messenger" in line for line in lines)
    relayed = [line for line in lines if "relayed to" in line]
    assert len(relayed) >= 2  # the message, the answer (and the answer's statuses)
    assert all(len(line) <= 120 for line in relayed), relayed
    assert not [line for line in lines if UUID.search(line)]


def test_the_sandbox_on_a_busy_port_says_so_in_one_line(tmp_path: Path) -> None:
    with busy_port() as port:
        result = amoconnect("run", "--sandbox", "--port", str(port), cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr == (
        f"Error: cannot listen on 127.0.0.1:{port}: the port is in use by another program; "
        "choose another with --port or [server] port\n"
    )


@pytest.mark.anyio
@pytest.mark.parametrize("dedicated", [True, False])
async def test_a_dedicated_server_settles_its_heap_once_its_runtime_has_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dedicated: bool
) -> None:
    runtime = Runtime(parse_config({**base_config(tmp_path), "sources": []}))
    frozen: list[bool] = []
    thresholds: list[tuple[int, ...]] = []
    monkeypatch.setattr(gc, "freeze", lambda: frozen.append(runtime.app is not None))
    monkeypatch.setattr(gc, "set_threshold", lambda *threshold: thresholds.append(threshold))
    port, stop = free_port(), anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: serve(runtime, host="127.0.0.1", port=port, stop=stop, dedicated=dedicated))
        await eventually(lambda: listening(f"http://127.0.0.1:{port}"), within=10)
        assert sys.getswitchinterval() == pytest.approx(SWITCH_INTERVAL) == 0.0001  # the loop takes the GIL soon
        stop.set()
    if dedicated:
        assert frozen == [True]  # what the runtime built is frozen with the rest
        ((young, *older),) = thresholds
        assert young == 10_000 and older == list(gc.get_threshold()[1:])
    else:  # a process that hosts a server (tests, an embedding application) keeps its own settings
        assert frozen == [] and thresholds == []


def test_run_serves_as_a_dedicated_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    served: list[dict[str, Any]] = []

    async def serve(runtime: Runtime, **options: Any) -> None:
        served.append(options)

    monkeypatch.setattr("amoconnect.runtime.serve", serve)
    config = tmp_path / "amoconnect.toml"
    config.write_text(tomli_w.dumps({**base_config(tmp_path), "sources": []}))
    result = CliRunner().invoke(main, ["run", "--config", str(config), "--port", "8123"])
    assert result.exit_code == 0, result.output
    assert served == [{"host": "127.0.0.1", "port": 8123, "dedicated": True}]
