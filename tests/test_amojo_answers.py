"""How the relay treats each kind of amojo answer (docs/deploy.md, "amojo's answers"): one test per row."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from rig import SCOPE, Rig, eventually, message, rig

from amoconnect.model import InboundStatus
from amoconnect.testing.stores import counts_are, table_rows

pytestmark = pytest.mark.anyio

UNEXPECTED_SUCCESS: list[Any] = [
    pytest.param(200, b"<html><body>Service temporarily moved</body></html>", id="200-html"),
    pytest.param(200, b"", id="200-empty"),
    pytest.param(200, {}, id="200-{}"),
    pytest.param(200, {"new_message": {}}, id="200-wrong-shape"),
    pytest.param(204, b"", id="204"),
    pytest.param(302, b"", id="302"),
]
RETRIED_REFUSALS: list[Any] = [
    pytest.param(status, {"error": "try again", "code": "conflict"}, id=str(status)) for status in (408, 409, 423, 425)
]
WRONG_REQUEST = [400, 401, 403, 404, 405, 410, 413, 415, 422, 451]


@pytest.fixture
async def r(tmp_path: Path):  # type: ignore[no-untyped-def]
    async with rig(tmp_path) as connected:
        yield connected


def _retried(r: Rig, kind: str = "inbound") -> float:
    value: float = r.runtime.metrics.jobs_retried.labels(kind).value
    return value


def _dead(r: Rig) -> list[str]:
    return [row[0] for row in table_rows(r.runtime.store, "dead", "error")]


@pytest.mark.parametrize(("status", "body"), UNEXPECTED_SUCCESS + RETRIED_REFUSALS)
async def test_a_send_answered_unexpectedly_is_retried_not_buried(r: Rig, status: int, body: Any) -> None:
    r.amojo.fail_next(status, body=body, path_contains=SCOPE)
    assert (await r.inbound(message("c1", "1", "after a bad answer"))).status_code == 200
    await eventually(lambda: counts_are(r.runtime.store, queued=0, running=0))
    (stored,) = r.amojo.messages_in("lb:c1")
    assert stored.text == "after a bad answer"
    assert _dead(r) == [] and _retried(r) == 1
    record = await r.runtime.store.message(SCOPE, "lb:c1:1")
    assert record is not None and record.amocrm_id == stored.id


@pytest.mark.parametrize(("status", "body"), UNEXPECTED_SUCCESS + RETRIED_REFUSALS)
async def test_a_send_amojo_took_but_answered_unexpectedly_is_then_a_recognised_duplicate(
    r: Rig, status: int, body: Any
) -> None:
    r.amojo.fail_next(status, body=body, path_contains=SCOPE, acted=True)
    await r.inbound(message("c1", "1", "taken once"))
    await eventually(lambda: counts_are(r.runtime.store, queued=0, running=0))
    (stored,) = r.amojo.messages_in("lb:c1")  # once in amoCRM
    record = await r.runtime.store.message(SCOPE, "lb:c1:1")
    assert record is not None and record.amocrm_id == stored.id  # found in the chat's history
    assert _dead(r) == [] and _retried(r) == 1


@pytest.mark.parametrize("status", WRONG_REQUEST)
async def test_an_answer_saying_the_request_is_wrong_is_a_dead_letter_at_once(r: Rig, status: int) -> None:
    r.amojo.fail_next(status, body={"error": "refused", "code": "invalid_body"}, path_contains=SCOPE)
    await r.inbound(message("c1", "1"))
    (error,) = await eventually(lambda: _dead(r))
    assert f"HTTP {status}" in error
    assert _retried(r) == 0 and r.amojo.messages == []


async def _status_to_report(r: Rig) -> str:
    """A manager's message sent to the client; amoCRM's id of it."""
    assert (await r.inbound(message("c1", "1"))).status_code == 200
    await eventually(lambda: r.amojo.messages_in("lb:c1"))
    emitted = await r.amojo.emit_text(SCOPE, "lb:c1", "read me")
    await eventually(lambda: r.adapter().sent)
    await eventually(lambda: counts_are(r.runtime.store, queued=0, running=0))
    return emitted.message_id or ""


@pytest.mark.parametrize(
    "body", [b"<html>proxy</html>", {}, {"ok": True}, b"not json"], ids=["html", "{}", "json", "text"]
)
async def test_a_delivery_status_answered_with_a_body_is_retried_not_counted_done(r: Rig, body: Any) -> None:
    amocrm_id = await _status_to_report(r)
    r.amojo.fail_next(200, body=body, path_contains="/delivery_status")
    status = InboundStatus(chat="c1", timestamp=time.time(), dedup_key="s1", message_id="out1", status="read")
    await r.inbound(status)
    statuses = await eventually(lambda: r.amojo.message(amocrm_id).statuses)
    assert [s.delivery_status for s in statuses] == [2]
    await eventually(lambda: counts_are(r.runtime.store, queued=0, running=0))
    assert _retried(r) == 1 and _dead(r) == []
    record = await r.runtime.store.message_by_amocrm(SCOPE, amocrm_id)
    assert record is not None and record.status == 2


async def test_a_delivery_status_answered_with_amojo_s_empty_200_is_done_at_once(r: Rig) -> None:
    amocrm_id = await _status_to_report(r)
    status = InboundStatus(chat="c1", timestamp=time.time(), dedup_key="s1", message_id="out1", status="read")
    await r.inbound(status)
    statuses = await eventually(lambda: r.amojo.message(amocrm_id).statuses)
    assert [s.delivery_status for s in statuses] == [2]
    assert _retried(r) == 0


@pytest.mark.parametrize("step", [-20 * 60, 20 * 60], ids=["back-20-min", "forward-20-min"])
async def test_a_step_of_our_wall_clock_past_amojo_s_date_window_buries_nothing(
    r: Rig, monkeypatch: pytest.MonkeyPatch, step: float
) -> None:
    """The connector's wall clock steps by more than amojo's 15-minute Date window (amojo keeps the
    right time): one request is refused, the client signs with amojo's time, nothing is buried."""
    assert (await r.inbound(message("c1", "1", "before the step"))).status_code == 200
    await eventually(lambda: counts_are(r.runtime.store, queued=0, running=0))
    wall = time.time
    monkeypatch.setattr(time, "time", lambda: wall() + step)
    for i in range(2, 6):
        assert (await r.inbound(message("c1", str(i), f"after the step {i}"))).status_code == 200
    await eventually(lambda: counts_are(r.runtime.store, queued=0, running=0))
    assert [m.text for m in r.amojo.messages_in("lb:c1")] == ["before the step"] + [
        f"after the step {i}" for i in range(2, 6)
    ]
    assert _dead(r) == []
    assert sum(1 for q in r.amojo.requests if q.status == 403) == 1
