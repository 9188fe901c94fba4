"""The HTTP edge: every refusal answers clearly and stores nothing; an ack means on disk."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import pytest
import structlog
from rig import ACCOUNT, SCOPE, SECRET, Rig, message, rig

from amoconnect.testing.stores import table_rows

pytestmark = pytest.mark.anyio


def hook_body(**overrides: Any) -> bytes:
    body: dict[str, Any] = {
        "account_id": ACCOUNT,
        "time": 1639572261,
        "message": {
            "conversation": {"id": "8e4d4baa", "client_id": "lb:c1"},
            "sender": {"id": "76fc2bea"},
            "receiver": {"id": "2ed64e26", "client_id": "lb:c1"},
            "timestamp": 1639572260,
            "msec_timestamp": 1639572260980,
            "message": {"id": "0371a0ff", "type": "text", "text": "Hello"},
        },
    }
    body.update(overrides)
    return json.dumps(body).encode()


def sig(body: bytes, secret: str = SECRET) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha1).hexdigest()


def stored(r: Rig) -> tuple[int, int]:
    store = r.runtime.store
    jobs = table_rows(store, "queue")[0][0] + table_rows(store, "dead")[0][0]
    return jobs, table_rows(store, "dedup")[0][0]


@pytest.fixture
async def r(tmp_path: Path):  # type: ignore[no-untyped-def]
    async with rig(tmp_path, server={"max_body_bytes": 4096}) as connected:
        # Park the relay so that what ingest stored stays visible.
        connected.runtime.relay.concurrency = 0
        yield connected


async def post_hook(r: Rig, body: bytes, *, signature: str | None = None, scope: str = SCOPE) -> Any:
    headers = {"Content-Type": "application/json"}
    if signature is not None:
        headers["X-Signature"] = signature
    return await r.client.post(f"/amocrm/{scope}", content=body, headers=headers)


async def test_signed_hook_is_stored_once(r: Rig) -> None:
    body = hook_body()
    first = await post_hook(r, body, signature=sig(body))
    assert (first.status_code, first.json()) == (200, {"ok": True})
    again = await post_hook(r, body, signature=sig(body))
    assert (again.status_code, again.json()) == (200, {"ok": True, "duplicate": True})
    assert stored(r) == (1, 1)


@pytest.mark.parametrize(
    ("signature", "why"),
    [
        (None, "missing"),
        ("0" * 40, "wrong"),
        ("not-hex", "malformed"),
        ("abc", "short"),
    ],
)
async def test_bad_signature_is_401_and_stores_nothing(r: Rig, signature: str | None, why: str) -> None:
    response = await post_hook(r, hook_body(), signature=signature)
    assert response.status_code == 401, why
    assert response.json()["error"] == "bad_signature"
    assert stored(r) == (0, 0)


async def test_signature_over_reencoded_json_is_refused(r: Rig) -> None:
    raw = b'{"account_id": "%s", "time": 1,  "message": {}}' % ACCOUNT.encode()
    reencoded = json.dumps(json.loads(raw), separators=(",", ":")).encode()
    assert (await post_hook(r, raw, signature=sig(reencoded))).status_code == 401


async def test_a_signature_may_leave_out_one_trailing_newline(r: Rig) -> None:
    body = hook_body() + b"\n"
    assert (await post_hook(r, body + b"\n", signature=sig(body.rstrip(b"\n")))).status_code == 401  # two
    assert (await post_hook(r, body, signature=sig(body.rstrip(b"\n")))).status_code == 200
    assert (await post_hook(r, body, signature=sig(body))).json() == {"ok": True, "duplicate": True}
    assert stored(r) == (1, 1)


async def test_unknown_scope_is_404(r: Rig) -> None:
    body = hook_body()
    response = await post_hook(r, body, signature=sig(body), scope="nope_nope")
    assert response.status_code == 404
    assert response.json()["error"] == "unknown_scope"
    assert stored(r) == (0, 0)


@pytest.mark.parametrize("body", [b"{not json", b'{"a": "\xff"}', b"[" * 1500 + b"]" * 1500])
async def test_a_body_that_is_not_json_is_400_and_stores_nothing(r: Rig, body: bytes) -> None:
    response = await post_hook(r, body, signature=sig(body))
    assert response.status_code == 400
    assert response.json()["error"] == "bad_body"
    assert "not valid JSON" in response.json()["detail"]
    assert stored(r) == (0, 0)


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"[]", "wrong shape"),
        (json.dumps({"account_id": ACCOUNT, "time": 1}).encode(), "neither 'message' nor 'action'"),
        (json.dumps({"message": {"text": "v1"}}).encode(), "v1"),
        (hook_body(time="yesterday"), "$.time"),
        (hook_body(account_id="00000000-0000-0000-0000-000000000000"), "hook for account '00000000-"),
    ],
)
async def test_a_signed_json_body_not_understood_is_kept_to_be_a_dead_letter(r: Rig, body: bytes, error: str) -> None:
    response = await post_hook(r, body, signature=sig(body))
    assert response.status_code == 200
    assert error in response.json()["dead_letter"]
    assert stored(r) == (1, 1)


async def test_oversized_body_is_413(r: Rig) -> None:
    body = hook_body(padding="x" * 5000)
    response = await post_hook(r, body, signature=sig(body))
    assert response.status_code == 413

    async def chunks():  # type: ignore[no-untyped-def]
        for _ in range(10):
            yield b"x" * 1000

    streamed = await r.client.post(f"/amocrm/{SCOPE}", content=chunks(), headers={"X-Signature": "0" * 40})
    assert streamed.status_code == 413
    assert stored(r) == (0, 0)


async def test_messenger_refusals(r: Rig) -> None:
    event = message("c1", "1")
    assert (await r.inbound(event, secret="wrong")).status_code == 401
    assert (await r.client.post("/hooks/loopback/nope", content=b"[]")).status_code == 404
    assert (await r.client.post("/hooks/telegram/lb", content=b"[]")).status_code == 404
    assert (await r.client.post("/hooks/loopback/lb/other", content=b"[]")).status_code == 404
    assert (await r.client.get("/hooks/loopback/lb")).status_code == 405
    from messengers.loopback import SIGNATURE_HEADER, sign

    bad = b'[{"type": "message"}]'
    response = await r.client.post("/hooks/loopback/lb", content=bad, headers={SIGNATURE_HEADER: sign(bad)})
    assert response.status_code == 400
    assert "loopback webhook body" in response.json()["detail"]
    assert stored(r) == (0, 0)
    assert (await r.inbound(event)).status_code == 200
    assert stored(r) == (1, 1)


async def test_metrics_and_health(r: Rig) -> None:
    await post_hook(r, hook_body(), signature="0" * 40)
    body = hook_body()
    await post_hook(r, body, signature=sig(body))
    text = (await r.client.get("/metrics")).text
    assert 'amoconnect_webhooks_refused_total{reason="bad_signature",source="amocrm"} 1.0' in text
    assert 'amoconnect_webhooks_received_total{source="amocrm"} 1.0' in text
    assert 'amoconnect_queue_depth{state="queued"} 1.0' in text
    assert "amoconnect_ack_seconds_bucket" in text
    health = (await r.client.get("/healthz")).json()
    assert health == {
        "status": "ok",
        "queue": {"queued": 1, "running": 0, "dead": 0},
        "accounts": {"active": 1, "needs_reauth": 0, "disconnected": 0},
    }


async def test_refusals_are_logged_without_the_secret(r: Rig) -> None:
    with structlog.testing.capture_logs() as logs:
        await post_hook(r, hook_body(), signature=sig(b"other"))
    (entry,) = [e for e in logs if e["event"] == "webhook refused"]
    assert entry["reason"] == "bad_signature"
    assert SECRET not in repr(logs)


def test_log_redaction_replaces_configured_secrets() -> None:
    from amoconnect.logging import redactor

    process = redactor([SECRET, "short"])
    event = process(None, "info", {"event": f"token {SECRET} leaked", "error": ValueError(SECRET), "n": 1})
    assert SECRET not in repr(event)
    assert event["event"] == "token [redacted] leaked"


def test_a_secret_learned_at_run_time_is_redacted_by_scrubbers_made_before() -> None:
    from amoconnect.logging import redact, redactor

    process = redactor([SECRET])
    derived = "derived-9f8e7d6c5b4a"
    assert process(None, "info", {"event": derived})["event"] == derived
    redact(derived)
    redact("tiny")  # too short to scrub safely: ignored
    event = process(None, "info", {"event": f"url ?token={derived}&x=tiny", "other": SECRET})
    assert event == {"event": "url ?token=[redacted]&x=tiny", "other": "[redacted]"}


async def test_a_store_that_cannot_write_answers_503_with_retry_after(r: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    from amoconnect.errors import StoreError

    async def broken(*args: Any, **kwargs: Any) -> bool:
        raise StoreError("disk full")

    monkeypatch.setattr(r.runtime.store, "enqueue", broken)
    body = hook_body()
    response = await post_hook(r, body, signature=sig(body))
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert response.json()["error"] == "store_unavailable"
    assert (await r.inbound(message("c1", "1"))).status_code == 503


async def test_other_methods_and_paths_under_amocrm_are_refused(r: Rig) -> None:
    assert (await r.client.get(f"/amocrm/{SCOPE}")).status_code == 405
    assert (await r.client.post(f"/amocrm/{SCOPE}/extra", content=b"{}")).status_code == 404
    assert (await r.client.post("/amocrm/", content=b"{}")).status_code == 404
    assert stored(r) == (0, 0)


async def test_a_webhook_is_counted_as_arriving_until_it_is_answered(r: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    """The relay lets webhooks go first (amoconnect/precedence.py): both webhook routes count each
    request from its first byte to its answer, refused ones included."""
    store = r.runtime.store
    enqueue = store.enqueue
    seen: list[int] = []

    async def counting(*args: Any, **kwargs: Any) -> bool:
        seen.append(r.runtime.arrivals.count)
        return await enqueue(*args, **kwargs)

    monkeypatch.setattr(store, "enqueue", counting)
    body = hook_body()
    assert (await post_hook(r, body, signature=sig(body))).status_code == 200
    assert (await r.inbound(message("c9", "m1"))).status_code == 200
    assert seen == [1, 1]
    assert (await post_hook(r, body, signature="0" * 40)).status_code == 401
    assert r.runtime.arrivals.count == 0


async def test_an_inbound_job_names_its_chat_for_the_store_to_bring_its_conversation(
    r: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The handler of an inbound job looks its conversation up by the messenger chat: the job says which
    (:attr:`NewJob.chat`), so that a store may read it with the job (PostgreSQL's claims do)."""
    jobs: list[Any] = []
    real = r.runtime.store.enqueue

    async def enqueue(new: Any, **options: Any) -> bool:
        jobs.extend(new)
        return await real(new, **options)

    monkeypatch.setattr(r.runtime.store, "enqueue", enqueue)
    assert (await r.inbound(message("c1", "1"))).status_code == 200
    (job,) = jobs
    assert (job.kind, job.chat) == ("inbound", ("lb", "c1"))
