"""Browser tests: Debian's Chromium, headless, driven through Playwright's Python API.

Fixtures:

- ``page``: a fresh page (its own browser context) in the module's one Chromium. Whatever goes
  wrong in it fails the test at teardown: a console error, an uncaught exception, a request that
  failed (but a script's ``fetch`` that leaving the page cancelled), a response of 400 or more
  (``page_problems.allow(404, "/path")`` for one the test expects). Every page that loaded must
  have been photographed by ``shot`` (the teardown takes the last one itself).
- ``shot``: ``shot("name")`` saves a screenshot of ``page`` into the test's screenshot folder,
  ``build/screenshots/<test>/NN-name.png`` (``AMOCONNECT_SCREENSHOTS`` names another root).
- ``serve``: ``serve(app)`` runs an ASGI app on a free loopback port for the test, in the session's
  event loop thread (``portal``), and returns its base URL.
- ``portal``: an anyio blocking portal: ``portal.call(async_fn, ...)`` runs code in that loop.

Chromium is ``AMOCONNECT_CHROMIUM``, else ``chromium`` (or ``chromium-browser``) on ``PATH``;
Playwright's own browser download is never used. Without Playwright or Chromium the tests skip,
unless ``AMOCONNECT_REQUIRE_BROWSER`` is set (CI sets it): then they fail.

The browser tests run once, in the SQLite pass: under ``--postgres`` (tox runs the suite again on
PostgreSQL) they are skipped, but for those marked ``store`` (``@pytest.mark.store``: what they
check depends on the store backend), which run on PostgreSQL too.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal

from amoconnect.testing.servers import serve_app

if TYPE_CHECKING:
    from playwright.sync_api import Browser, ConsoleMessage, Frame, Page, Request, Response

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = Path(os.environ.get("AMOCONNECT_SCREENSHOTS") or ROOT / "build" / "screenshots")
"""Where each test's screenshots go, one folder per test."""


def _unavailable(reason: str) -> None:
    if os.environ.get("AMOCONNECT_REQUIRE_BROWSER"):
        pytest.fail(f"{reason}, but AMOCONNECT_REQUIRE_BROWSER is set", pytrace=False)
    pytest.skip(reason)


def chromium_path() -> str | None:
    """The system's Chromium: ``AMOCONNECT_CHROMIUM``, else ``chromium`` / ``chromium-browser`` on PATH."""
    configured = os.environ.get("AMOCONNECT_CHROMIUM")
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    return shutil.which("chromium") or shutil.which("chromium-browser")


HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under ``--postgres``, skip the browser tests not marked ``store``: they ran in the SQLite pass."""
    if not config.getoption("postgres", False):
        return
    once = pytest.mark.skip(reason="browser test: runs in the SQLite pass (mark it `store` to run on PostgreSQL too)")
    for item in items:
        if HERE in Path(item.path).resolve().parents and item.get_closest_marker("store") is None:
            item.add_marker(once)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One headless Chromium per test module.

    Playwright's sync API keeps its event loop marked as running while it is open, so it must be
    closed before the suites that run their own loops (anyio) start: not session-scoped.
    """
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (pip install -e '.[test]')")
    executable = chromium_path()
    if executable is None:
        _unavailable("no Chromium found (Debian: apt-get install chromium; or set AMOCONNECT_CHROMIUM)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="session")
def portal() -> Iterator[BlockingPortal]:
    """An asyncio event loop in a thread of its own, where the servers under test run."""
    with start_blocking_portal("asyncio") as running:
        yield running


@pytest.fixture
def serve(portal: BlockingPortal) -> Iterator[Callable[[Any], str]]:
    """``serve(app)``: the ASGI ``app`` on a free loopback port until the test ends; its base URL."""
    with ExitStack() as stack:

        def start(app: Any) -> str:
            return str(stack.enter_context(portal.wrap_async_context_manager(serve_app(app))))

        yield start


class PageProblems:
    """What went wrong in a page: console errors, uncaught exceptions, failed requests, HTTP errors."""

    def __init__(self) -> None:
        self.found: list[str] = []
        self.loaded: list[str] = []
        """The URL of every page that loaded, in order."""
        self._allowed: list[tuple[int, re.Pattern[str]]] = []
        self._leaving = 0
        """Navigation requests of the main frame so far (each may replace the page)."""
        self._shown = 0
        """``_leaving`` when the page now shown committed."""
        self._issued_by: dict[Request, int] = {}

    def allow(self, status: int, url: str) -> None:
        """Expect a response with ``status`` from a URL containing ``url`` (a regular expression)."""
        self._allowed.append((status, re.compile(url)))

    def _expected(self, status: int, url: str) -> bool:
        return any(status == s and pattern.search(url) for s, pattern in self._allowed)

    def report(self, shots: Shots) -> list[str]:
        """Everything that went wrong, and every page that loaded but was never photographed."""
        missed = [url for url in self.loaded if url not in shots.urls]
        return self.found + [f"page loaded but never photographed (call shot()): {url}" for url in missed]

    def on_load(self, page: Page) -> None:
        self.loaded.append(page.url)

    def on_console(self, message: ConsoleMessage) -> None:
        # Chromium reports every HTTP error response again as a console error: the response
        # check below judges those, so an expected one does not fail the test twice.
        if message.type == "error" and not message.text.startswith("Failed to load resource: the server responded"):
            self.found.append(f"console error: {message.text} ({message.location.get('url', '')})")

    def on_page_error(self, error: Exception) -> None:
        self.found.append(f"uncaught exception: {error}")

    def on_navigated(self, frame: Frame) -> None:
        if frame.parent_frame is None:
            self._shown = self._leaving

    def on_request(self, request: Request) -> None:
        if request.is_navigation_request() and request.frame.parent_frame is None:
            self._leaving += 1
        elif request.resource_type in ("fetch", "xhr"):
            self._issued_by[request] = self._shown

    def on_request_failed(self, request: Request) -> None:
        # A script's request that the page's leaving cancelled (a navigation began after the page
        # that sent it was shown) is no problem; one cancelled while the page stayed is.
        issued_by = self._issued_by.pop(request, None)
        if request.failure == "net::ERR_ABORTED" and issued_by is not None and self._leaving > issued_by:
            return
        self.found.append(f"request failed: {request.method} {request.url}: {request.failure}")

    def on_finished(self, request: Request) -> None:
        self._issued_by.pop(request, None)

    def on_response(self, response: Response) -> None:
        if response.status >= 400 and not self._expected(response.status, response.url):
            self.found.append(f"HTTP {response.status}: {response.request.method} {response.url}")


@pytest.fixture
def page_problems() -> PageProblems:
    """The problems of the test's ``page``; ``allow()`` the HTTP errors the test expects."""
    return PageProblems()


class Shots:
    """Screenshots of one test's page, numbered in the order taken."""

    def __init__(self, page: Page, folder: Path) -> None:
        self.page = page
        self.folder = folder
        self.taken: list[Path] = []
        self.urls: set[str] = set()

    def __call__(self, name: str) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "page"
        path = self.folder / f"{len(self.taken) + 1:02d}-{slug}.png"
        self.page.screenshot(path=str(path), full_page=True)
        self.taken.append(path)
        self.urls.add(self.page.url)
        return path


def _test_folder(node: pytest.Item) -> Path:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{Path(node.path).stem}.{node.name}").strip("-")
    folder = SCREENSHOTS / name
    shutil.rmtree(folder, ignore_errors=True)
    return folder


@pytest.fixture
def page(browser: Browser, page_problems: PageProblems, request: pytest.FixtureRequest) -> Iterator[Page]:
    """A fresh page; the test fails on any problem in it (module docstring)."""
    context = browser.new_context(locale="en-US", viewport={"width": 1200, "height": 800})
    opened = context.new_page()
    opened.set_default_timeout(10_000)
    opened.on("console", page_problems.on_console)
    opened.on("pageerror", page_problems.on_page_error)
    opened.on("request", page_problems.on_request)
    opened.on("requestfailed", page_problems.on_request_failed)
    opened.on("requestfinished", page_problems.on_finished)
    opened.on("framenavigated", page_problems.on_navigated)
    opened.on("response", page_problems.on_response)
    opened.on("load", page_problems.on_load)
    shots = Shots(opened, _test_folder(request.node))
    request.node.stash[_SHOTS] = shots
    try:
        yield opened
        if opened.url != "about:blank":
            shots("last")
        problems = page_problems.report(shots)
        if problems:
            pytest.fail("problems in the browser:\n  " + "\n  ".join(problems), pytrace=False)
    finally:
        context.close()


_SHOTS: pytest.StashKey[Shots] = pytest.StashKey()


@pytest.fixture
def shot(page: Page, request: pytest.FixtureRequest) -> Shots:
    """``shot("name")``: a screenshot of ``page`` into the test's screenshot folder; returns its path."""
    return request.node.stash[_SHOTS]
