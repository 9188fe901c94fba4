"""Python calls a benchmark's server makes per message on its main thread, the event loop's.

CPU time per message swings by ±10 % between identical runs on a shared machine, which hides a
step that saves 3 %; how many Python functions (and C functions called from Python, such as a
SQLite statement) run per message barely moves. ``bench_cpu.py --calls`` counts them: the server
(``bench/connector.py``, ``bench/baselines.py aiohttp``) runs cProfile on its main thread from
``START`` to ``STOP`` (two signals) and writes the count to the file named in ``ENV``. Threads
other than the main one (the SQLite store's commits) are not counted, and the profiler makes every
call slower, so a run with ``--calls`` reports no CPU figures.
"""

from __future__ import annotations

import asyncio
import cProfile
import os
import pstats
import shutil
import signal
import time
from pathlib import Path
from typing import Any

ENV = "AMOCONNECT_BENCH_CALLS"
"""The file a server writes its count to; ``{pid}`` in it is replaced by the server's pid."""
KEEP = "AMOCONNECT_BENCH_CALLS_KEEP"
"""A directory where each count's profile is also kept (``<pid>-<time>.prof``), to read with ``pstats``:
which functions make the calls, and who calls them."""
START, STOP = signal.SIGUSR2, signal.SIGUSR1


def install() -> None:
    """In a server: count calls between ``START`` and ``STOP`` when ``ENV`` names a file."""
    template = os.environ.get(ENV)
    if not template:
        return
    path = template.format(pid=os.getpid())
    profile = cProfile.Profile()

    def start(signum: int, frame: object) -> None:
        profile.clear()
        profile.enable()

    def stop(signum: int, frame: object) -> None:
        profile.disable()
        profile.dump_stats(path + ".part")
        os.replace(path + ".part", path)

    signal.signal(START, start)
    signal.signal(STOP, stop)


class Count:
    """One count of a server's calls, from :meth:`start` to :meth:`stop`."""

    def __init__(self, pid: int, template: str) -> None:
        self.pid = pid
        self.path = Path(template.format(pid=pid))

    def start(self) -> None:
        self.path.unlink(missing_ok=True)
        os.kill(self.pid, START)

    async def stop(self, messages: int) -> dict[str, Any] | None:
        """The calls per message (None: the server does not count, e.g. another checkout's)."""
        os.kill(self.pid, STOP)
        for _ in range(100):
            if self.path.exists():
                break
            await asyncio.sleep(0.05)
        else:
            return None
        stats = pstats.Stats(str(self.path))
        keep = os.environ.get(KEEP)
        if keep:
            shutil.copy(self.path, Path(keep) / f"{self.pid}-{time.time():.0f}.prof")
        self.path.unlink()
        return per_message(stats, messages)


def _package(filename: str) -> str:
    """Where a profiled function lives: a package, ``stdlib``, or ``C`` (a built-in, a C method)."""
    if filename == "~":
        return "C"
    if "site-packages/" in filename:
        return filename.split("site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
    if "/amoconnect/" in filename:
        return "amoconnect"
    return "stdlib" if "/lib/python" in filename else Path(filename).stem


def per_message(stats: pstats.Stats, messages: int) -> dict[str, Any]:
    """Calls per message: all of them, by package, and the SQLite statements among them."""
    by_package: dict[str, int] = {}
    statements = 0
    table: dict[tuple[str, int, str], tuple[Any, ...]] = stats.stats  # type: ignore[attr-defined]
    for (filename, _, name), (_, calls, *_) in table.items():
        package = _package(filename)
        by_package[package] = by_package.get(package, 0) + calls
        if "of 'sqlite3.Connection' objects" in name and ("'execute'" in name or "'executemany'" in name):
            statements += calls
    n = max(messages, 1)
    ranked = sorted(by_package.items(), key=lambda item: -item[1])
    return {
        "calls_per_message": round(sum(by_package.values()) / n, 1),
        "by_package": {package: round(calls / n, 1) for package, calls in ranked[:12]},
        "sqlite_statements_per_message": round(statements / n, 2),
    }
