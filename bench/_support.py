"""Shared helpers of the benchmark scripts: machine line, percentiles, processes, a raw HTTP/1.1 client.

Not a benchmark itself. Every loop here is bounded in count and in time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
"""The committed figures README quotes: only a run with ``--save`` writes here."""
SCRATCH_DIR = BENCH_DIR / "out"
"""Where every other run writes its JSON (ignored by git)."""
PYTHON = sys.executable

# Identities shared by every benchmark (made up; any values work against the fakes).
CHANNEL_ID = "11111111-2222-3333-4444-555555555555"
CHANNEL_SECRET = "0123456789abcdef0123456789abcdef01234567"
ACCOUNT_ID = "52e591f7-c98f-4255-8495-827210138c81"
SCOPE_ID = f"{CHANNEL_ID}_{ACCOUNT_ID}"


# -- the machine -------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """The machine line: cores, CPU model, Python, load when the run started."""
    model = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    try:
        nproc = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        nproc = os.cpu_count() or 0
    commit = None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=BENCH_DIR, capture_output=True, text=True, timeout=5
        ).stdout.strip()
    return {
        "commit": commit or None,
        "nproc": nproc,
        "cpu": model,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def machine_line(info: dict[str, Any]) -> str:
    return (
        f"{info['nproc']} cores, {info['cpu']}, Python {info['python']} ({info['platform']}); "
        f"load at start {' '.join(str(x) for x in info['loadavg_at_start'])}"
    )


# -- numbers -----------------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile of already sorted values (``None`` when empty)."""
    if not sorted_values:
        return None
    rank = max(1, min(len(sorted_values), int(-(-p * len(sorted_values) // 100))))
    return sorted_values[rank - 1]


def latency_summary(seconds: Sequence[float]) -> dict[str, float | int | None]:
    """p50/p99/p99.9/max in milliseconds of latencies given in seconds."""
    values = sorted(seconds)

    def ms(value: float | None) -> float | None:
        return None if value is None else round(value * 1000, 3)

    return {
        "n": len(values),
        "p50_ms": ms(percentile(values, 50)),
        "p99_ms": ms(percentile(values, 99)),
        "p99_9_ms": ms(percentile(values, 99.9)),
        "max_ms": ms(values[-1] if values else None),
    }


def fmt(value: float | int | None, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.{digits}f}"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines.extend(
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in rows
    )
    return "\n".join(lines)


def add_save_option(parser: argparse.ArgumentParser) -> None:
    """``--save``: write the results over the committed ones in bench/results/ (else to bench/out/)."""
    parser.add_argument(
        "--save",
        action="store_true",
        help="write the JSON to bench/results/, over the committed figures (default: bench/out/)",
    )


def write_results(name: str, data: dict[str, Any], *, save: bool) -> Path:
    """Write ``name``.json to bench/results/ when ``save``, else to bench/out/; its path."""
    directory = RESULTS_DIR if save else SCRATCH_DIR
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


# -- processes ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _stat(path: Path) -> list[str]:
    """The fields of a ``/proc/<pid>/stat`` (or a thread's) after the command name: ``[1]`` is the
    parent's pid, ``[11]`` and ``[12]`` the user and system CPU in clock ticks, ``[13]`` and ``[14]``
    those of the children waited for."""
    return path.read_text("ascii").rsplit(")", 1)[1].split()


def _cpu(fields: list[str]) -> int:
    """User + system CPU of :func:`_stat`'s fields, in clock ticks."""
    return int(fields[11]) + int(fields[12])


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of a process, of its children that ended (and were waited for) and of those alive: a
    server that forks a process a connection (PostgreSQL), from ``/proc``."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = _stat(stat)
        except OSError:
            continue  # ended meanwhile
        if stat.parent.name == str(pid):
            total += _cpu(fields) + int(fields[13]) + int(fields[14])
        elif fields[1] == str(pid):
            total += _cpu(fields)
    return total / os.sysconf("SC_CLK_TCK")


class Process:
    """A child process this benchmark started; it is ended by its own pid, never by name."""

    _alive: list[Process] = []  # noqa: RUF012 - a registry of the children to stop at exit

    def __init__(self, args: Sequence[str], log_path: Path, *, env: dict[str, str] | None = None) -> None:
        self.args = list(args)
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()/kill()
        self.started_at = time.time()
        self.popen = subprocess.Popen(
            self.args,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            cwd=BENCH_DIR.parent,
        )
        Process._alive.append(self)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def cpu_seconds(self) -> float:
        """CPU time (user + system, every thread) the process has used so far, from ``/proc``."""
        return _cpu(_stat(Path(f"/proc/{self.popen.pid}/stat"))) / os.sysconf("SC_CLK_TCK")

    def threads(self) -> dict[str, float]:
        """CPU seconds and context switches (voluntary: it waited; involuntary: it was preempted) of the
        main thread and of the others together, from ``/proc``: ``main_cpu_s``, ``others_voluntary`` ..."""
        tick = os.sysconf("SC_CLK_TCK")
        figures = {f"{who}_{what}": 0.0 for who in ("main", "others") for what in ("cpu_s", "voluntary", "involuntary")}
        for task in Path(f"/proc/{self.popen.pid}/task").iterdir():
            try:
                fields = _stat(task / "stat")
                status = (task / "status").read_text("ascii")
            except OSError:
                continue  # a thread that ended meanwhile
            who = "main" if task.name == str(self.popen.pid) else "others"
            figures[f"{who}_cpu_s"] += _cpu(fields) / tick
            for line in status.splitlines():
                name, _, value = line.partition(":")
                if name in ("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches"):
                    figures[f"{who}_{'voluntary' if name.startswith('vol') else 'involuntary'}"] += int(value)
        return figures

    def kill9(self) -> None:
        """``kill -9``: no chance to flush or answer anything."""
        if self.popen.poll() is None:
            os.kill(self.popen.pid, signal.SIGKILL)
        self.popen.wait(timeout=10)
        self._close()

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL if it does not leave within ``timeout`` seconds."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout=10)
        self._close()
        return self.popen.returncode

    def _close(self) -> None:
        if self in Process._alive:
            Process._alive.remove(self)
        self._log.close()

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    @classmethod
    def stop_all(cls) -> None:
        for process in list(cls._alive):
            with contextlib.suppress(Exception):
                process.stop(timeout=5)


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_ready(url: str, process: Process, timeout: float = 30.0) -> float:
    """Poll ``url`` until it answers 200; returns the time it did. Raises if the process dies or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.popen.poll() is not None:
            raise RuntimeError(f"{process.args[:4]} exited with {process.popen.returncode}:\n{process.tail()}")
        with contextlib.suppress(OSError):
            status, _ = http_get(url, timeout=1.0)
            if status == 200:
                return time.time()
        time.sleep(0.01)
    raise RuntimeError(f"{url} not ready within {timeout} s:\n{process.tail()}")


@contextlib.contextmanager
def children() -> Iterator[None]:
    """Stop every child process left running when the block ends, whatever happens."""
    try:
        yield
    finally:
        Process.stop_all()


# -- a raw HTTP/1.1 client for load generation ---------------------------------------------------


class RawPool:
    """Keep-alive HTTP/1.1 connections to one host, for pre-built request bytes.

    Much cheaper per request than a full client library, so the generator is not what limits
    the measurement. A server that closes the connection (HTTP/1.0, ``Connection: close``) is
    handled by opening a new one.
    """

    def __init__(self, host: str, port: int, max_connections: int, *, request_timeout: float = 10.0) -> None:
        self.host = host
        self.request_timeout = request_timeout
        self.port = port
        self.max_connections = max_connections
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._slots = asyncio.Semaphore(max_connections)
        self.failures: dict[str, int] = {}
        """Transport failures by exception type."""

    def _take_idle(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        while self._idle:
            conn = self._idle.pop()
            if not conn[0].at_eof():
                return conn
            conn[1].close()  # the server closed it while idle (keep-alive timeout)
        return None

    async def request(self, data: bytes) -> tuple[int | None, bytes]:
        """Send one request; ``(status, body)``, status ``None`` on a transport error or timeout.

        A request that finds a reused connection closed before any answer byte (the server's
        keep-alive timeout raced it) is sent again once on a new connection, as HTTP clients do.
        """
        conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        await self._slots.acquire()
        try:
            async with asyncio.timeout(self.request_timeout):
                for attempt in (1, 2):
                    conn = self._take_idle() if attempt == 1 else None
                    reused = conn is not None
                    if conn is None:
                        conn = await asyncio.open_connection(self.host, self.port)
                    reader, writer = conn
                    writer.write(data)
                    try:
                        head = await reader.readuntil(b"\r\n\r\n")
                    except (asyncio.IncompleteReadError, ConnectionResetError) as exc:
                        stale = isinstance(exc, ConnectionResetError) or not exc.partial
                        if reused and stale and attempt == 1:
                            writer.close()
                            conn = None
                            continue
                        raise
                    break
                status = int(head[9:12])
                lower = head.lower()
                length = -1
                at = lower.find(b"content-length:")
                if at >= 0:
                    length = int(lower[at + 15 : lower.index(b"\r\n", at)])
                body = await reader.readexactly(length) if length >= 0 else await reader.read()
                if length < 0 or head.startswith(b"HTTP/1.0") or b"connection: close" in lower:
                    writer.close()
                else:
                    self._idle.append(conn)
                conn = None
                return status, body
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError) as exc:
            name = type(exc).__name__
            self.failures[name] = self.failures.get(name, 0) + 1
            if conn is not None:
                conn[1].close()
            return None, b""
        finally:
            self._slots.release()

    async def close(self) -> None:
        for _, writer in self._idle:
            writer.close()
        self._idle.clear()


def post_bytes(host: str, port: int, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    """A complete HTTP/1.1 POST request as bytes."""
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
