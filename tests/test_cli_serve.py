"""``amoconnect run`` as a user starts it: a real process, a real port."""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import tomli_w
from rig import base_config

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
