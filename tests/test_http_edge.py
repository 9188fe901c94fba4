"""The HTTP edge against hostile input: media served safely, metric labels bounded, malformed bodies refused."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
import structlog.testing
from rig import rig

from amoconnect.metrics import Metrics
from amoconnect.server import guard

pytestmark = pytest.mark.anyio

SVG = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(document.domain)</script></svg>'
HTML = b"<html><script>fetch('/metrics').then(r => r.text()).then(alert)</script></html>"


@pytest.mark.parametrize(
    ("content", "content_type", "file_name", "disposition"),
    [
        (HTML, "text/html", "page.html", "attachment"),
        (SVG, "image/svg+xml", "logo.svg", "attachment"),
        (SVG, "IMAGE/SVG+XML; charset=utf-8", "logo.svg", "attachment"),
        (b"%PDF-1.7", "application/pdf", "a.pdf", "attachment"),
        (b"\x89PNG", "image/png", "photo.png", "inline"),
        (b"ID3", "audio/mpeg", "voice.mp3", "inline"),
        (b"\x00\x00\x00\x18ftyp", "video/mp4", "clip.mp4", "inline"),
    ],
)
async def test_media_cannot_run_as_a_page_of_the_connector(
    tmp_path: Path, content: bytes, content_type: str, file_name: str, disposition: str
) -> None:
    async with rig(tmp_path) as r:
        media = r.runtime.media
        file_id, _ = await media.put(content, content_type=content_type, file_name=file_name)
        got = await r.client.get(f"/media/{media.token(file_id)}")
    assert got.status_code == 200
    assert got.content == content
    assert got.headers["content-disposition"] == f"{disposition}; filename*=UTF-8''{file_name}"
    assert got.headers["x-content-type-options"] == "nosniff"
    assert got.headers["content-security-policy"] == "sandbox; default-src 'none'"


async def test_unknown_paths_add_no_metric_series(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        for i in range(3):
            assert (await r.client.post(f"/hooks/made-up-{i}/x", content=b"{}")).status_code == 404
            assert (await r.client.post(f"/hooks/loopback/made-up-{i}", content=b"{}")).status_code == 404
        before = (await r.client.get("/metrics")).text
        for i in range(50):
            assert (await r.client.post(f"/hooks/unique-{i}/x", content=b"{}")).status_code == 404
            assert (await r.client.post(f"/hooks/loopback/unique-{i}", content=b"{}")).status_code == 404
        after = (await r.client.get("/metrics")).text
    series = [line.rpartition(" ")[0] for line in after.splitlines() if not line.startswith("#")]
    assert series == [line.rpartition(" ")[0] for line in before.splitlines() if not line.startswith("#")]
    assert "unique" not in after and "made-up" not in after
    refused = 'amoconnect_webhooks_refused_total{reason="unknown_instance",source="unknown"} 53.0'
    assert refused in after
    assert 'amoconnect_webhooks_refused_total{reason="unknown_instance",source="loopback"} 53.0' in after


def test_connections_fit_the_open_file_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    limits = {"soft": 1024, "hard": 4096}

    def setrlimit(kind: int, value: tuple[int, int]) -> None:
        if value[0] > limits["hard"]:
            raise ValueError("not allowed")
        limits["soft"] = value[0]

    monkeypatch.setattr(guard.resource, "getrlimit", lambda kind: (limits["soft"], limits["hard"]))
    monkeypatch.setattr(guard.resource, "setrlimit", setrlimit)
    assert guard.fit_descriptors(1000) == 1000  # the soft limit is raised to what it needs
    assert limits["soft"] == 1000 + guard.RESERVED_DESCRIPTORS
    limits.update(soft=1024, hard=1024)  # systemd's default hard limit in older units
    with structlog.testing.capture_logs() as logs:
        assert guard.fit_descriptors(1000) == 1024 - guard.RESERVED_DESCRIPTORS
    assert logs[0]["effective"] == 768 and "lowered" in logs[0]["event"]


async def test_refusals_are_logged_once_per_interval_with_their_count() -> None:
    metrics = Metrics()
    refusals = guard.Refusals(metrics, log_every=0.2)
    with structlog.testing.capture_logs() as logs:
        for _ in range(5):
            refusals.note("header_timeout", client="127.0.0.1:1")
        refusals.note("max_connections")
        assert [(line["reason"], line["count"]) for line in logs] == [("header_timeout", 1), ("max_connections", 1)]
        await anyio.sleep(0.3)  # the interval is over: what was counted meanwhile gets its line
        assert [(line["reason"], line["count"]) for line in logs[2:]] == [("header_timeout", 4)]
        refusals.flush()  # nothing more to say
    assert len(logs) == 3
    assert 'amoconnect_connections_refused_total{reason="header_timeout"} 5.0' in metrics.render().decode()
