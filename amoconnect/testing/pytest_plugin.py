"""amoconnect's test kit as a pytest plugin, loaded wherever amoconnect is installed (entry point ``pytest11``).

Fixtures:

- ``fake_amojo``: a :class:`~amoconnect.testing.fake_amojo.FakeAmojo` of the kit's channel
  (:data:`~amoconnect.testing.kit.CHANNEL`, :data:`~amoconnect.testing.kit.SECRET`) with the
  kit's account connected; in-process, its ASGI app is ``fake_amojo.app``;
- ``fake_amojo_url``: the same fake served on a free loopback port, as its base URL;
- ``make_connector``: ``async with make_connector(plugin, **options) as rig`` runs a connector
  with one instance of the plugin's messenger between ``fake_amojo`` and the messenger's fake,
  its store in the test's ``tmp_path`` (options as for :func:`~amoconnect.testing.kit.connector`);
- ``anyio_backend``: ``"asyncio"`` (the connector's server side runs on asyncio), unless the
  project's own conftest defines it.

Option ``--postgres``: start a throwaway PostgreSQL server for the session
(:class:`~amoconnect.testing.pgserver.TemporaryPostgres`) and run every connector the kit builds
on it, a fresh schema per test (:mod:`~amoconnect.testing.stores`); the same happens when
``AMOCONNECT_TEST_POSTGRES`` names a server of your own.

The conformance suite is a class to subclass: :mod:`amoconnect.testing.conformance`.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .fake_amojo import FakeAmojo
    from .kit import ConnectorRig

__all__ = [
    "AnyioBackend",
    "fake_amojo",
    "fake_amojo_url",
    "make_connector",
    "pytest_addoption",
    "pytest_configure",
    "pytest_unconfigure",
]


def pytest_addoption(parser: pytest.Parser) -> None:
    """``--postgres``: run the kit's connectors on a throwaway PostgreSQL server."""
    parser.addoption(
        "--postgres",
        action="store_true",
        help="amoconnect: run every test store on a temporary PostgreSQL server (needs PostgreSQL installed)",
    )


_SERVER: pytest.StashKey[Any] = pytest.StashKey()


class AnyioBackend:
    """Holds the kit's ``anyio_backend`` fixture; registered once every plugin has loaded, so it
    overrides anyio's own (which would also run each test under trio) while a conftest's still wins."""

    @pytest.fixture
    def anyio_backend(self) -> str:
        """Run async tests on asyncio."""
        return "asyncio"


def pytest_configure(config: pytest.Config) -> None:
    """Register :class:`AnyioBackend` after the other plugins (fixtures of later plugins take precedence)."""
    if not config.pluginmanager.has_plugin("amoconnect-anyio-backend"):
        config.pluginmanager.register(AnyioBackend(), "amoconnect-anyio-backend")
    if config.getoption("postgres", False):
        from .pgserver import TemporaryPostgres
        from .stores import POSTGRES_ENV

        os.environ["AMOCONNECT_REQUIRE_POSTGRES"] = "1"
        if not os.environ.get(POSTGRES_ENV):
            server = TemporaryPostgres()
            os.environ[POSTGRES_ENV] = server.start()
            config.stash[_SERVER] = server


def pytest_unconfigure(config: pytest.Config) -> None:
    """Stop the server ``--postgres`` started."""
    server = config.stash.get(_SERVER, None)
    if server is not None:
        from .stores import POSTGRES_ENV

        server.stop()
        os.environ.pop(POSTGRES_ENV, None)


@pytest.fixture
def fake_amojo() -> FakeAmojo:
    """The fake amojo of the kit's channel, the kit's account connected (in-process: ``fake_amojo.app``)."""
    from .fake_amojo import FakeAmojo
    from .kit import ACCOUNT, BOT, CHANNEL, PUBLIC_URL, SECRET

    amojo = FakeAmojo(CHANNEL, SECRET, bot_id=BOT)
    amojo.connect(ACCOUNT, webhook_url=f"{PUBLIC_URL}/amocrm/:scope_id")
    return amojo


@pytest.fixture
async def fake_amojo_url(fake_amojo: FakeAmojo) -> AsyncIterator[str]:
    """``fake_amojo`` served on a free loopback port: its base URL (``http://127.0.0.1:PORT``)."""
    from .servers import serve_app

    async with serve_app(fake_amojo.app) as url:
        yield url


@pytest.fixture
def make_connector(tmp_path: Path, fake_amojo: FakeAmojo) -> Callable[..., AbstractAsyncContextManager[ConnectorRig]]:
    """``make_connector(plugin, **options)``: a :func:`~amoconnect.testing.kit.connector` on ``fake_amojo``."""
    from .kit import connector

    def make(plugin: Any, **options: Any) -> AbstractAsyncContextManager[ConnectorRig]:
        options.setdefault("workdir", tmp_path)
        options.setdefault("amojo", fake_amojo)
        return connector(plugin, **options)

    return make
