"""The browser harness itself: it sees what goes wrong in a page, and lets through what a test expects."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Page
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

CSP = "default-src 'self'; script-src 'self'; style-src 'self'"

GOOD = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Good</title>
<link rel="icon" href="/favicon.ico"><script src="/app.js" defer></script></head>
<body><h1>Привет, page</h1><p id="js">no script ran</p></body></html>"""

BAD = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Bad</title>
<link rel="icon" href="/favicon.ico"><script src="/broken.js" defer></script></head>
<body><h1>Bad</h1><img src="/missing.png" alt="missing"><img src="http://127.0.0.1:9/refused.png" alt="x">
<script>document.title = "inline ran"</script></body></html>"""


POLLING = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Polling</title>
<link rel="icon" href="/favicon.ico"><script src="/poll.js" defer></script></head>
<body><h1>Polling</h1></body></html>"""

POLL_JS = """fetch("/hang").catch(() => {});
if (location.search === "?give-up") {
  const stop = new AbortController();
  fetch("/hang", { signal: stop.signal }).catch(() => { document.title = "gave up"; });
  stop.abort();
}"""


def _app() -> Starlette:
    async def good(request: Request) -> Response:
        return HTMLResponse(GOOD, headers={"Content-Security-Policy": CSP})

    async def bad(request: Request) -> Response:
        return HTMLResponse(BAD, headers={"Content-Security-Policy": CSP + "; img-src *"})

    async def script(request: Request) -> Response:
        body = 'document.getElementById("js").textContent = "script ran";'
        return Response(body, media_type="text/javascript")

    async def broken(request: Request) -> Response:
        return Response('console.error("broken on purpose"); null.boom();', media_type="text/javascript")

    async def icon(request: Request) -> Response:
        return Response(b"", media_type="image/x-icon")

    async def polling(request: Request) -> Response:
        return HTMLResponse(POLLING, headers={"Content-Security-Policy": CSP + "; connect-src 'self'"})

    async def poll(request: Request) -> Response:
        return Response(POLL_JS, media_type="text/javascript")

    async def hang(request: Request) -> Response:
        """Answers only once the browser has gone: the request stays in flight while the page is there."""
        while (await request.receive())["type"] != "http.disconnect":
            pass
        return Response(status_code=204)

    async def missing(request: Request) -> Response:
        return Response("no such picture", status_code=404)

    return Starlette(
        routes=[
            Route("/", good),
            Route("/bad", bad),
            Route("/app.js", script),
            Route("/broken.js", broken),
            Route("/favicon.ico", icon),
            Route("/missing.png", missing),
            Route("/polling", polling),
            Route("/poll.js", poll),
            Route("/hang", hang),
        ]
    )


@pytest.fixture
def site(serve: Callable[[Any], str]) -> str:
    return serve(_app())


def test_a_clean_page_passes_and_is_photographed(page: Page, site: str, shot: Callable[[str], Any]) -> None:
    page.goto(site)
    page.get_by_text("script ran").wait_for()
    path = shot("clean")
    assert path.stat().st_size > 1000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.parent.name.endswith("test_a_clean_page_passes_and_is_photographed")


def test_it_sees_console_errors_exceptions_failed_requests_http_errors_and_csp(
    page: Page, site: str, shot: Callable[[str], Any], page_problems: Any
) -> None:
    page.goto(site + "/bad")
    page.wait_for_load_state("load")
    page.wait_for_timeout(200)  # let the last events arrive
    shot("bad")
    found = "\n".join(page_problems.found)
    assert "console error: broken on purpose" in found
    assert "uncaught exception:" in found and "null" in found
    assert "HTTP 404: GET " + site + "/missing.png" in found
    assert "request failed: GET http://127.0.0.1:9/refused.png" in found
    assert "Content Security Policy" in found  # the inline script was refused, and said so
    assert page.title() == "Bad"
    page_problems.found.clear()  # seen: this test expects them


def test_an_expected_http_error_is_allowed(
    page: Page, site: str, shot: Callable[[str], Any], page_problems: Any
) -> None:
    page_problems.allow(404, r"/nothing-here$")
    response = page.goto(site + "/nothing-here")
    assert response is not None and response.status == 404
    shot("expected 404")
    assert page_problems.found == []


def test_a_page_left_without_a_screenshot_is_named(
    page: Page, site: str, shot: Callable[[str], Any], page_problems: Any
) -> None:
    page_problems.allow(404, r"/nothing-here$")
    page.goto(site + "/")
    page.goto(site + "/nothing-here")
    shots = shot("second page only")
    assert page_problems.report(shot) == [f"page loaded but never photographed (call shot()): {site}/"]
    assert shots.name == "01-second-page-only.png"
    page_problems.loaded.clear()  # seen: this test expects it


def test_a_fetch_cancelled_by_leaving_the_page_is_no_problem_but_one_a_script_gives_up_on_is(
    page: Page, site: str, shot: Callable[[str], Any], page_problems: Any
) -> None:
    with page.expect_request(site + "/hang"):
        page.goto(site + "/polling")
    shot("polling")
    page.goto(site + "/")  # the poll still in flight: leaving the page cancels it
    page.get_by_text("script ran").wait_for()
    shot("left")
    assert page_problems.report(shot) == []

    page.goto(site + "/polling?give-up")
    page.wait_for_function("document.title === 'gave up'")
    shot("gave up")
    page.goto(site + "/")  # the other poll, cancelled by leaving
    shot("left again")
    assert page_problems.report(shot) == [f"request failed: GET {site}/hang: net::ERR_ABORTED"]
    page_problems.found.clear()  # seen: this test expects the one it gave up on
