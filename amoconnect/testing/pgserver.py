"""A throwaway PostgreSQL server for tests: ``initdb`` into a temporary directory, ``pg_ctl`` on a free port.

``pytest --postgres`` (the kit's pytest plugin) starts one for the session and points
:func:`~amoconnect.testing.stores.store_settings` at it, so a suite that passes on SQLite runs
again on PostgreSQL without a server to set up. The binaries come from ``$PG_BIN``,
``pg_config --bindir`` or Debian's ``/usr/lib/postgresql/<version>/bin`` (package
``postgresql``). As root the server runs as the ``postgres`` user, which ``initdb`` requires.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from ..errors import StoreError

__all__ = ["TemporaryPostgres", "find_postgres_bin"]


def find_postgres_bin() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl``, or None when PostgreSQL is not installed."""
    candidates: list[Path] = []
    if os.environ.get("PG_BIN"):
        candidates.append(Path(os.environ["PG_BIN"]))
    pg_config = shutil.which("pg_config")
    if pg_config:
        found = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        if found.returncode == 0:
            candidates.append(Path(found.stdout.strip()))
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name), reverse=True)
    candidates.extend(debian)
    for directory in candidates:
        if (directory / "initdb").exists() and (directory / "pg_ctl").exists():
            return directory
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class TemporaryPostgres:
    """A PostgreSQL server in a temporary directory, trusting local connections; ``url`` once started.

    Durability is relaxed (``fsync=off``) unless ``durable``: the tests kill amoconnect, never
    the server; benchmarks want the real thing.
    """

    def __init__(self, *, max_connections: int = 300, durable: bool = False) -> None:
        self.max_connections = max_connections
        self.durable = durable
        self.url = ""
        self._dir: Path | None = None
        self._bin: Path | None = None
        self._as_postgres = os.geteuid() == 0

    def _command(self, *args: str) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *args] if self._as_postgres else list(args)

    def start(self) -> str:
        """Initialise and start the server; returns its URL."""
        self._bin = find_postgres_bin()
        if self._bin is None:
            raise StoreError(
                "PostgreSQL is not installed (no initdb/pg_ctl found); on Debian: apt-get install postgresql"
            )
        self._dir = Path(tempfile.mkdtemp(prefix="amoconnect-pg-"))
        data = self._dir / "data"
        if self._as_postgres:
            shutil.chown(self._dir, "postgres")
        port = _free_port()
        settings = f"-p {port} -k {self._dir} -c listen_addresses=127.0.0.1 -c max_connections={self.max_connections}"
        if not self.durable:
            settings += " -c fsync=off -c full_page_writes=off"
        for step in (
            [str(self._bin / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"],
            [str(self._bin / "pg_ctl"), "-D", str(data), "-o", settings, "-l", str(self._dir / "log"), "-w", "start"],
        ):
            done = subprocess.run(self._command(*step), capture_output=True, text=True, check=False)
            if done.returncode != 0:
                log = self._dir / "log"
                detail = done.stderr.strip() or (log.read_text() if log.exists() else "")
                self.stop()
                raise StoreError(f"could not start a temporary PostgreSQL ({Path(step[0]).name}): {detail}")
        self.url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        return self.url

    def stop(self) -> None:
        """Stop the server and delete its directory."""
        if self._dir is None:
            return
        data = self._dir / "data"
        if self._bin is not None and (data / "postmaster.pid").exists():
            subprocess.run(
                self._command(str(self._bin / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"),
                capture_output=True,
                check=False,
            )
        shutil.rmtree(self._dir, ignore_errors=True)
        self._dir = None

    @property
    def pid(self) -> int | None:
        """The server's process id (its postmaster's), while it runs."""
        if self._dir is None:
            return None
        try:
            return int((self._dir / "data" / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def __enter__(self) -> TemporaryPostgres:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
