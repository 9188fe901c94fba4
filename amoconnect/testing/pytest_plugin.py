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

The conformance suite is a class to subclass: :mod:`amoconnect.testing.conformance`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .fake_amojo import FakeAmojo
    from .kit import ConnectorRig

__all__ = ["AnyioBackend", "fake_amojo", "fake_amojo_url", "make_connector", "pytest_configure"]


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


@pytest.fixture
def fake_amojo() -> FakeAmojo:
    """The fake amojo of the kit's channel, the kit's account connected (in-process: ``fake_amojo.app``)."""
    from .fake_amojo import FakeAmojo
    from .kit import ACCOUNT, CHANNEL, PUBLIC_URL, SECRET

    amojo = FakeAmojo(CHANNEL, SECRET)
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
