"""Both directions through the runtime, in-process: the loopback messenger ↔ the core ↔ the fake amojo."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
from rig import SCOPE, Rig, eventually, lose_the_first_outcome, message, rig

from amoconnect.errors import MessengerError, RateLimited
from amoconnect.model import (
    Attachment,
    InboundComment,
    InboundEdit,
    InboundMessage,
    InboundReaction,
    InboundStatus,
    InboundTyping,
    OutgoingCommentReply,
    OutgoingMessage,
    OutgoingReaction,
    OutgoingTyping,
    Person,
    Post,
)
from amoconnect.store.base import PREVIEW_CHARS, MessageRecord, RecentConversation
from amoconnect.testing.stores import counts_are, table_rows

pytestmark = pytest.mark.anyio


@pytest.fixture
async def r(tmp_path: Path):  # type: ignore[no-untyped-def]
    async with rig(tmp_path) as connected:
        yield connected


async def _first_client_message(r: Rig, chat: str = "c1", text: str = "hello") -> str:
    """A client message reaches amoCRM and its job records the conversation; returns amoCRM's id of it.

    A manager's answer sent before that record commits waits for it (a test of its own), and each
    such wait is one of the job's attempts: a test of retries must not spend them on it.
    """
    assert (await r.inbound(message(chat, "1", text))).status_code == 200
    stored = await eventually(lambda: r.amojo.message_by_msgid(f"lb:{chat}:1", scope_id=SCOPE))
    await eventually(lambda: r.runtime.store.conversation(SCOPE, f"lb:{chat}"))
    return stored.id


async def test_client_message_reaches_amocrm_with_derived_ids(r: Rig) -> None:
    await _first_client_message(r)
    (stored,) = r.amojo.messages_in("lb:c1")
    assert stored.text == "hello"
    assert stored.payload is not None
    assert stored.payload.sender.id == "lb:c1"
    assert stored.payload.source is not None
    assert stored.payload.source.external_id == "lb"
    record = await eventually(lambda: r.runtime.store.message(SCOPE, "lb:c1:1"))  # committed just after the send
    assert record is not None
    assert record.amocrm_id == stored.id
    assert record.messenger_id == "1"


async def test_duplicate_webhook_is_acknowledged_and_relayed_once(r: Rig) -> None:
    event = message("c1", "1")
    assert (await r.inbound(event)).status_code == 200
    assert (await r.inbound(event)).status_code == 200
    await eventually(lambda: r.amojo.messages_in("lb:c1"))
    await anyio.sleep(0.1)
    assert len(r.amojo.messages_in("lb:c1")) == 1


async def test_manager_reply_reaches_the_messenger_and_maps_ids(r: Rig) -> None:
    client_msg = await _first_client_message(r)
    result = await r.amojo.emit_reply(SCOPE, "lb:c1", client_msg, "answer")
    assert result.status == 200
    adapter = r.adapter()
    (sent,) = await eventually(lambda: adapter.sent)
    assert isinstance(sent, OutgoingMessage)
    assert sent.chat == "c1"
    assert sent.text == "answer"
    assert sent.reply_to == "1"  # amoCRM's quoted id mapped back to the messenger's
    record = await eventually(
        lambda: r.runtime.store.message_by_amocrm(SCOPE, result.message_id or "")
    )  # committed just after the send
    assert record is not None
    assert record.messenger_id == "out1"
    conversation = await eventually(
        lambda: r.runtime.store.conversation(SCOPE, "lb:c1")
    )  # committed just after the send
    assert conversation is not None
    assert conversation.amocrm_chat_id == result.chat_id


async def test_conversation_order_is_kept_under_a_slow_messenger(r: Rig) -> None:
    await _first_client_message(r)
    adapter = r.adapter()
    original = adapter.send_message

    async def slow(msg: OutgoingMessage):  # type: ignore[no-untyped-def]
        await anyio.sleep(0.003 * (hash(msg.text) % 5))
        return await original(msg)

    adapter.send_message = slow
    for i in range(15):
        await r.amojo.emit_text(SCOPE, "lb:c1", f"m{i}")
    await eventually(lambda: len(adapter.sent) == 15)
    assert [m.text for m in adapter.sent] == [f"m{i}" for i in range(15)]


async def test_inbound_order_is_kept_per_conversation_and_parallel_across(r: Rig) -> None:
    for i in range(10):
        await r.inbound(message("a", str(i), f"a{i}"), message("b", str(i), f"b{i}"))
    await eventually(lambda: len(r.amojo.messages_in("lb:a")) == 10 and len(r.amojo.messages_in("lb:b")) == 10)
    assert [m.text for m in r.amojo.messages_in("lb:a")] == [f"a{i}" for i in range(10)]
    assert [m.text for m in r.amojo.messages_in("lb:b")] == [f"b{i}" for i in range(10)]


async def test_messenger_failure_is_retried_then_succeeds(r: Rig) -> None:
    await _first_client_message(r)
    adapter = r.adapter()
    adapter.failures = [MessengerError("timeout", retryable=True), RateLimited("slow down", retry_after=0.01)]
    await r.amojo.emit_text(SCOPE, "lb:c1", "eventually")
    await eventually(lambda: adapter.sent)
    assert adapter.sent[0].text == "eventually"
    assert r.runtime.metrics.jobs_retried.labels("amocrm").value == 2


async def test_retries_run_out_then_dead_letter_then_requeue(r: Rig) -> None:
    await _first_client_message(r)
    adapter = r.adapter()
    adapter.failures = [MessengerError("down", retryable=True)] * 3
    emitted = await r.amojo.emit_text(SCOPE, "lb:c1", "lost?")
    store = r.runtime.store
    dead = await eventually(lambda: r.amojo.message(emitted.message_id or "").statuses)
    # The manager is told: status -1 with 903 and the reason.
    assert dead[-1].delivery_status == -1
    assert dead[-1].error_code == 903
    letters = await store.dead_letters()
    assert len(letters) == 1
    assert "gave up after 3 attempts" in letters[0].error
    assert await store.requeue() == 1
    await eventually(lambda: adapter.sent)
    assert adapter.sent[0].text == "lost?"


async def test_permanent_messenger_failure_reports_the_mapped_code(r: Rig) -> None:
    await _first_client_message(r)
    r.adapter().failures = [MessengerError("bot was blocked by the user", reason="blocked")]
    emitted = await r.amojo.emit_text(SCOPE, "lb:c1", "hello?")
    statuses = await eventually(lambda: r.amojo.message(emitted.message_id or "").statuses)
    assert (statuses[0].delivery_status, statuses[0].error_code) == (-1, 901)


async def test_amojo_outage_is_retried(r: Rig) -> None:
    r.amojo.fail_next(503, times=3)
    await r.inbound(message("c1", "1", "through the storm"))
    stored = await eventually(lambda: r.amojo.messages_in("lb:c1"), within=10)
    assert stored[0].text == "through the storm"


async def test_the_job_retry_honours_retry_after_when_the_call_attempts_ran_out(r: Rig) -> None:
    r.amojo.fail_next(429, times=2, retry_after=0.4)  # both of the rig's [http] attempts, then the job's retry
    started = time.monotonic()
    await r.inbound(message("c1", "1", "later"))
    await eventually(lambda: r.amojo.messages_in("lb:c1"), within=5)
    assert time.monotonic() - started >= 0.8, "the job waited the 429's Retry-After, not its own short backoff"
    assert r.runtime.metrics.http_retries.labels("amojo").value == 1
    assert r.runtime.metrics.jobs_retried.labels("inbound").value == 1


async def test_amojo_refusal_goes_to_dead_letters(r: Rig) -> None:
    r.amojo.fail_next(400, body={"error": "bad", "code": "invalid_body"})
    await r.inbound(message("c1", "1"))
    letters = await eventually(lambda: _dead(r))
    assert "HTTP 400" in letters


async def test_a_forbidden_scope_is_a_dead_letter_at_once_saying_what_to_do(r: Rig) -> None:
    r.amojo.fail_next(403, body={"error": "access to the scope is denied", "code": "forbidden"})
    await r.inbound(message("c1", "1"))
    letters = await eventually(lambda: _dead(r))
    assert "HTTP 403" in letters and "amoconnect connect" in letters and "amoconnect jobs retry" in letters
    assert r.runtime.metrics.jobs_retried.labels("inbound").value == 0
    assert r.runtime.metrics.http_retries.labels("amojo").value == 0


def _dead(r: Rig) -> str:
    # Dead letters read synchronously for polling inside eventually().
    return " ".join(row[0] for row in table_rows(r.runtime.store, "dead", "error"))


async def test_statuses_move_forward_only(r: Rig) -> None:
    await _first_client_message(r)
    emitted = await r.amojo.emit_text(SCOPE, "lb:c1", "status me")
    await eventually(lambda: r.adapter().sent)
    now = time.time()
    read = InboundStatus(chat="c1", timestamp=now, dedup_key="s1", message_id="out1", status="read")
    late = InboundStatus(chat="c1", timestamp=now, dedup_key="s2", message_id="out1", status="delivered")
    await r.inbound(read)
    await r.inbound(late)
    statuses = await eventually(lambda: r.amojo.message(emitted.message_id or "").statuses)
    await anyio.sleep(0.1)
    assert [s.delivery_status for s in r.amojo.message(emitted.message_id or "").statuses] == [2]
    assert statuses


async def test_status_before_its_mapping_waits_for_it(r: Rig) -> None:
    await _first_client_message(r)
    adapter = r.adapter()
    gate = anyio.Event()
    original = adapter.send_message

    async def held(msg: OutgoingMessage):  # type: ignore[no-untyped-def]
        await gate.wait()
        return await original(msg)

    adapter.send_message = held
    emitted = await r.amojo.emit_text(SCOPE, "lb:c1", "racing")
    await r.inbound(
        InboundStatus(chat="c1", timestamp=time.time(), dedup_key="s", message_id="out1", status="delivered")
    )
    await anyio.sleep(0.05)
    gate.set()
    statuses = await eventually(lambda: r.amojo.message(emitted.message_id or "").statuses)
    assert statuses[0].delivery_status == 1


async def test_failed_status_carries_the_readable_reason(r: Rig) -> None:
    await _first_client_message(r)
    emitted = await r.amojo.emit_text(SCOPE, "lb:c1", "x")
    await eventually(lambda: r.adapter().sent)
    await r.inbound(
        InboundStatus(
            chat="c1",
            timestamp=time.time(),
            dedup_key="f",
            message_id="out1",
            status="failed",
            reason="no_chat",
            error_code="131026",
            error="undeliverable",
        )
    )
    statuses = await eventually(lambda: r.amojo.message(emitted.message_id or "").statuses)
    assert (statuses[0].delivery_status, statuses[0].error_code, statuses[0].error) == (-1, 904, "undeliverable")


async def test_client_edit_becomes_edit_message(r: Rig) -> None:
    await _first_client_message(r, text="typo")
    edit = InboundEdit(
        chat="c1", timestamp=time.time(), dedup_key="e1", sender=Person(id="c1"), message_id="1", text="fixed"
    )
    await r.inbound(edit)
    stored = r.amojo.message_by_msgid("lb:c1:1", scope_id=SCOPE)
    assert stored is not None
    edits = await eventually(lambda: stored.edits)
    assert edits[0].message.text == "fixed"


async def test_reactions_both_ways(r: Rig) -> None:
    client_msg = await _first_client_message(r)
    await r.inbound(
        InboundReaction(
            chat="c1", timestamp=time.time(), dedup_key="r1", sender=Person(id="c1"), message_id="1", emoji="👍"
        )
    )
    (reaction,) = await eventually(lambda: r.amojo.reactions)
    assert reaction.request.emoji == "👍"
    assert reaction.message_id == client_msg
    await r.amojo.emit_reaction(SCOPE, "lb:c1", client_msg, "❤️", nested=True)
    (sent,) = await eventually(lambda: r.adapter().sent)
    assert sent == OutgoingReaction(chat="c1", message_id="1", emoji="❤")
    # Not in the messenger's set: no call.
    await r.amojo.emit_reaction(SCOPE, "lb:c1", client_msg, "🦄")
    await r.amojo.emit_reaction(SCOPE, "lb:c1", client_msg, unreact=True)
    await eventually(lambda: len(r.adapter().sent) == 2)
    assert r.adapter().sent[1] == OutgoingReaction(chat="c1", message_id="1", removed=True)


async def test_a_reaction_waits_for_the_mapping_of_its_message(r: Rig) -> None:
    """A manager's reaction to a message whose job is still recording its ids is relayed once they are."""
    await _first_client_message(r)
    amocrm_id = "5a1e5a1e-0000-4000-8000-00000000beef"
    await r.amojo.emit_reaction(SCOPE, "lb:c1", amocrm_id, "❤️")
    await anyio.sleep(0.2)  # the reaction's job ran once and waits
    assert r.adapter().sent == []
    await r.runtime.store.put_message(
        MessageRecord(SCOPE, "lb:c1:2", "lb:c1", "in", amocrm_id=amocrm_id, messenger_id="2")
    )
    (sent,) = await eventually(lambda: r.adapter().sent)
    assert sent == OutgoingReaction(chat="c1", message_id="2", emoji="❤")


async def test_a_client_s_reaction_waits_for_the_mapping_of_its_message(r: Rig) -> None:
    """A reaction to a manager's message whose job is still recording its ids reaches amoCRM once they are."""
    await _first_client_message(r)
    emitted = await r.amojo.emit_text(SCOPE, "lb:c1", "a manager's answer")

    async def recorded() -> MessageRecord | None:
        record = await r.runtime.store.message_by_amocrm(SCOPE, emitted.message_id or "")
        return record if record is not None and record.messenger_id else None

    answer = await eventually(recorded)
    # The client reacts under an id the store does not have yet, as if the answer's job were still finishing.
    event = InboundReaction(
        chat="c1", timestamp=time.time(), dedup_key="r-early", sender=Person(id="c1"), message_id="late", emoji="👍"
    )
    await r.inbound(event)
    await anyio.sleep(0.2)  # its job ran once and waits
    assert r.amojo.reactions == []
    await r.runtime.store.put_message(msgspec.structs.replace(answer, messenger_id="late"))
    (reaction,) = await eventually(lambda: r.amojo.reactions)
    assert (reaction.request.emoji, reaction.message_id) == ("👍", emitted.message_id)


async def test_typing_both_ways_throttled(r: Rig) -> None:
    await _first_client_message(r)
    for i in range(3):
        await r.inbound(InboundTyping(chat="c1", timestamp=time.time(), dedup_key=f"t{i}", sender=Person(id="c1")))
    await eventually(lambda: r.amojo.typing)
    await anyio.sleep(0.1)
    assert len(r.amojo.typing) == 1  # one per 5 s per conversation
    await r.amojo.emit_typing(SCOPE, "lb:c1")
    (typing,) = await eventually(lambda: r.adapter().sent)
    assert isinstance(typing, OutgoingTyping)
    assert typing.until > time.time()


async def test_media_is_rehosted_at_a_signed_url(r: Rig) -> None:
    event = message("c1", "1", "look", attachments=(Attachment(kind="picture", fetch="f1", file_name="p.png"),))
    await r.inbound(event)
    (stored,) = await eventually(lambda: r.amojo.messages_in("lb:c1"))
    assert stored.type == "picture"
    url = stored.content.media
    assert url is not None
    assert url.startswith("http://amoconnect/media/")
    got = await r.client.get(url)
    assert got.status_code == 200
    assert got.content == b"PNGDATA"
    assert got.headers["content-type"] == "image/png"
    tampered = url[:-3] + ("AAA" if not url.endswith("AAA") else "BBB")
    assert (await r.client.get(tampered)).status_code == 404
    assert (await r.client.get("/media/../../etc/passwd")).status_code == 404


async def test_write_first_then_client_answer_ties_the_chats(r: Rig) -> None:
    emitted = await r.amojo.emit_write_first(SCOPE, "+79990001122", "we write first", source_external_id="lb")
    (sent,) = await eventually(lambda: r.adapter().sent)
    assert sent.phone == "+79990001122"
    assert sent.chat is None
    chat = "phone:+79990001122"
    await r.inbound(message(chat, "9", "answer"))
    stored = await eventually(lambda: r.amojo.message_by_msgid(f"lb:{chat}:9", scope_id=SCOPE))
    assert stored.payload.conversation_ref_id == emitted.chat_id
    assert stored.chat_id == emitted.chat_id


def _hold_finishes(r: Rig) -> anyio.Event:
    """Hold every job's finish (its record) until the returned event is set."""
    store = r.runtime.store
    recorded = anyio.Event()
    finish = store.finish

    async def held(*args: Any, **kwargs: Any) -> None:
        await recorded.wait()
        await finish(*args, **kwargs)

    store.finish = held  # type: ignore[method-assign]
    return recorded


async def test_a_client_answer_that_outruns_the_write_first_record_joins_its_chat(r: Rig) -> None:
    """The client answers while the write first's job is still recording the chat: the answer waits for it."""
    recorded = _hold_finishes(r)
    emitted = await r.amojo.emit_write_first(SCOPE, "+79990001133", "we write first", source_external_id="lb")
    await eventually(lambda: r.adapter().sent)  # sent to the client; the chat is not recorded yet
    chat = "phone:+79990001133"
    await r.inbound(message(chat, "9", "answer"))
    await anyio.sleep(0.3)  # the answer's job ran once and waits
    assert r.amojo.messages_in(f"lb:{chat}") == []
    recorded.set()
    stored = await eventually(lambda: r.amojo.message_by_msgid(f"lb:{chat}:9", scope_id=SCOPE))
    assert stored.payload.conversation_ref_id == emitted.chat_id
    assert stored.chat_id == emitted.chat_id


async def test_write_first_refused_by_a_messenger_that_cannot(r: Rig) -> None:
    emitted = await r.amojo.emit_write_first(SCOPE, "+70000000000", "hi", source_external_id="pl")
    statuses = await eventually(lambda: r.amojo.message(emitted.message_id or "").statuses)
    assert statuses[0].error_code == 904
    assert "cannot start a chat" in (statuses[0].error or "")


async def test_buttons_list_and_template_reach_the_adapter(r: Rig) -> None:
    from amoconnect.amojo import wire

    await _first_client_message(r)
    await r.amojo.emit_buttons(
        SCOPE, "lb:c1", "pick", [[wire.Button(text="Yes"), wire.Button(text="Site", url="https://x.test")]]
    )
    lm = wire.ListMessage(
        body="Menu",
        button="Open",
        sections=[wire.ListSection(title="S", rows=[wire.ListRow(callback_data="row-1", title="One")])],
    )
    await r.amojo.emit_list_message(SCOPE, "lb:c1", lm)
    await r.amojo.emit_template(SCOPE, "lb:c1", "Hello {{name}}", {"name": "Ann"}, external_id="hello_v1")
    sent = await eventually(lambda: len(r.adapter().sent) == 3 and r.adapter().sent)
    assert sent[0].buttons[0][0].callback_data == "Yes"
    assert sent[0].buttons[0][1].url == "https://x.test"
    assert sent[1].list_message.sections[0].rows[0].callback_data == "row-1"
    assert sent[2].template.external_id == "hello_v1"
    assert sent[2].template.params[0].value == "Ann"


async def test_a_plain_messenger_gets_text_instead_of_what_it_cannot_show(tmp_path: Path) -> None:
    from amoconnect.amojo import wire

    async with rig(tmp_path) as r:
        await r.inbound(message("p1", "1"), instance="pl")
        await eventually(lambda: r.amojo.messages_in("pl:p1"))
        await r.amojo.emit_buttons(SCOPE, "pl:p1", "pick", [[wire.Button(text="Site", url="https://x.test")]])
        (sent,) = await eventually(lambda: r.adapter("pl").sent)
        assert sent.buttons == ()
        assert "Site: https://x.test" in sent.text


async def test_button_press_reaches_amocrm_with_callback_data(r: Rig) -> None:
    await r.inbound(message("c1", "5", "One", callback_data="row-1"))
    (stored,) = await eventually(lambda: r.amojo.messages_in("lb:c1"))
    assert stored.content.callback_data == "row-1"


async def test_window_closed_sends_template_or_fails_readably(r: Rig) -> None:
    old = time.time() - 2 * 86400
    await r.inbound(message("w1", "1", timestamp=old), instance="wa")
    await eventually(lambda: r.amojo.messages_in("wa:w1"))
    free = await r.amojo.emit_text(SCOPE, "wa:w1", "free text")
    statuses = await eventually(lambda: r.amojo.message(free.message_id or "").statuses)
    assert statuses[0].error_code == 905
    assert "24-hour reply window closed at" in (statuses[0].error or "")
    assert r.adapter("wa").sent == []
    await r.amojo.emit_template(SCOPE, "wa:w1", "Hi {{n}}", {"n": "A"}, external_id="hi")
    (sent,) = await eventually(lambda: r.adapter("wa").sent)
    assert sent.template.external_id == "hi"
    assert sent.text == ""


async def test_comment_thread_and_replies(r: Rig) -> None:
    post = Post(id="p7", url="https://social.test/wall-1_7", caption="Sale!")
    comment = InboundComment(
        chat="c9",
        timestamp=time.time(),
        dedup_key="cm1",
        sender=Person(id="c9", name="Bob"),
        post=post,
        comment_id="55",
        text="price?",
    )
    await r.inbound(comment)
    (stored,) = await eventually(lambda: r.amojo.messages_in("lb:c9"))
    assert stored.content.post is not None
    assert stored.content.post.id == "p7"
    await r.amojo.emit_comment_reply(SCOPE, "lb:c9", "p7", "10 USD")
    (reply,) = await eventually(lambda: r.adapter().sent)
    assert reply == OutgoingCommentReply(
        chat="c9", post_id="p7", comment_id="55", text="10 USD", dedup_key=reply.dedup_key
    )
    await r.amojo.emit_text(SCOPE, "lb:c9", "in private")
    await eventually(lambda: len(r.adapter().sent) == 2)
    assert isinstance(r.adapter().sent[1], OutgoingMessage)


async def test_unknown_conversation_is_reported_not_retried(r: Rig) -> None:
    r.amojo.add_chat(SCOPE, "nobody-knows", client_id="x")
    emitted = await r.amojo.emit_text(SCOPE, "nobody-knows", "hello?")
    statuses = await eventually(lambda: r.amojo.message(emitted.message_id or "").statuses)
    assert statuses[0].error_code == 905
    assert "does not know conversation" in (statuses[0].error or "")


async def test_plugins_extend_the_failure_reason_table(r: Rig) -> None:
    await _first_client_message(r)
    type(r.adapter()).error_reasons = {"131026": "no_chat"}
    try:
        emitted = await r.amojo.emit_text(SCOPE, "lb:c1", "x")
        await eventually(lambda: r.adapter().sent)
        await r.inbound(
            InboundStatus(
                chat="c1",
                timestamp=time.time(),
                dedup_key="f",
                message_id="out1",
                status="failed",
                error_code="131026",
                error="Message undeliverable",
            )
        )
        statuses = await eventually(lambda: r.amojo.message(emitted.message_id or "").statuses)
        assert (statuses[0].error_code, statuses[0].error) == (904, "Message undeliverable")
    finally:
        type(r.adapter()).error_reasons = {}


async def test_a_rate_limit_holds_the_chats_other_sends(r: Rig) -> None:
    await _first_client_message(r)
    adapter = r.adapter()
    instance = r.runtime.routing.get("lb")
    assert instance is not None
    ((_, limiter),) = instance.limiters
    adapter.failures = [RateLimited("Too Many Requests: retry after 1", retry_after=0.5)]
    await r.amojo.emit_text(SCOPE, "lb:c1", "first")
    await eventually(lambda: not adapter.failures)
    assert await limiter.wait_time("") > 0.2  # every send of the instance waits, not only this job
    await eventually(lambda: adapter.sent)
    assert adapter.sent[0].text == "first"


async def test_a_failing_adapter_run_is_restarted(r: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    import amoconnect.runtime as runtime_module

    monkeypatch.setattr(runtime_module, "ADAPTER_RESTART_MIN", 0.01)
    adapter = r.adapter()
    calls: list[int] = []

    async def run() -> None:
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("polling broke")

    adapter.run = run
    instance = r.runtime.routing.get("lb")
    assert instance is not None
    with anyio.fail_after(5):
        await r.runtime._run_adapter(instance)
    assert len(calls) == 3


async def test_a_media_group_keeps_its_order_and_its_id(r: Rig) -> None:
    await _first_client_message(r)
    for i in range(3):
        await r.amojo.emit_media(
            SCOPE,
            "lb:c1",
            "picture",
            f"https://files.test/{i}.jpg",
            file_name=f"{i}.jpg",
            file_size=10,
            media_group_id="album-1",
        )
    sent = await eventually(lambda: len(r.adapter().sent) == 3 and r.adapter().sent)
    assert [m.attachments[0].url for m in sent] == [f"https://files.test/{i}.jpg" for i in range(3)]
    assert {m.media_group_id for m in sent} == {"album-1"}


async def test_manager_typing_in_a_comment_thread_names_the_post(r: Rig) -> None:
    post = Post(id="p7", url="https://social.test/wall-1_7")
    await r.inbound(
        InboundComment(
            chat="c9",
            timestamp=time.time(),
            dedup_key="cm1",
            sender=Person(id="c9"),
            post=post,
            comment_id="55",
            text="?",
        )
    )
    await eventually(lambda: r.amojo.messages_in("lb:c9"))
    await r.amojo.emit_typing(SCOPE, "lb:c9", post_id="p7")
    (typing,) = await eventually(lambda: r.adapter().sent)
    assert typing.post_id == "p7"


async def test_manager_typing_waits_for_the_conversation_still_being_recorded(r: Rig) -> None:
    """Typing right after a client's first message reaches the client while that message's job is finishing."""
    recorded = _hold_finishes(r)
    await r.inbound(message("c1", "1", "hello"))
    await eventually(lambda: r.amojo.messages_in("lb:c1"))  # sent to amoCRM; the conversation is not recorded yet
    await r.amojo.emit_typing(SCOPE, "lb:c1")
    await anyio.sleep(0.2)  # the typing's job ran once and waits
    assert r.adapter().sent == []
    recorded.set()
    (typing,) = await eventually(lambda: r.adapter().sent)
    assert isinstance(typing, OutgoingTyping)


async def test_a_manager_s_send_keeps_a_reply_window_moved_on_meanwhile(r: Rig) -> None:
    await _first_client_message(r)
    # The first answer teaches us amoCRM's chat id (written with the conversation); the next ones change nothing.
    replied = await r.amojo.emit_text(SCOPE, "lb:c1", "first answer")
    await eventually(lambda: r.runtime.store.message_by_amocrm(SCOPE, replied.message_id or ""))
    record = await r.runtime.store.conversation_by_chat("lb", "c1")
    assert record is not None
    adapter = r.adapter()
    original = adapter.send_message
    later = (record.last_client_at or 0) + 60

    async def send_while_the_client_writes(message: Any) -> Any:
        # An inbound job of the same chat commits while the manager's message is being sent.
        await r.runtime.store.put_conversation(msgspec.structs.replace(record, last_client_at=later))
        return await original(message)

    adapter.send_message = send_while_the_client_writes
    emitted = await r.amojo.emit_text(SCOPE, "lb:c1", "answer")
    await eventually(lambda: r.runtime.store.message_by_amocrm(SCOPE, emitted.message_id or ""))
    stored = await r.runtime.store.conversation_by_chat("lb", "c1")
    assert stored is not None and stored.last_client_at == later


async def test_a_manager_s_first_reply_learns_the_chat_id_and_keeps_a_reply_window_moved_on_meanwhile(r: Rig) -> None:
    await _first_client_message(r)
    adapter = r.adapter()
    original = adapter.send_message
    later = time.time() + 60

    async def send_while_the_client_writes(message_: Any) -> Any:
        # The client writes again while the manager's first answer is being sent: its job commits first.
        await r.inbound(message("c1", "2", timestamp=later))
        await eventually(lambda: _last_client_at_is(r, later))
        return await original(message_)

    adapter.send_message = send_while_the_client_writes
    emitted = await r.amojo.emit_text(SCOPE, "lb:c1", "first answer")
    await eventually(lambda: r.runtime.store.message_by_amocrm(SCOPE, emitted.message_id or ""))
    stored = await r.runtime.store.conversation_by_chat("lb", "c1")
    assert stored is not None
    assert (stored.amocrm_chat_id, stored.last_client_at) == (emitted.chat_id, later)


async def _last_client_at_is(r: Rig, expected: float) -> bool:
    record = await r.runtime.store.conversation_by_chat("lb", "c1")
    return record is not None and record.last_client_at == expected


def _comment(chat: str = "c9", comment_id: str = "55") -> InboundComment:
    return InboundComment(
        chat=chat,
        timestamp=time.time(),
        dedup_key=f"cm-{comment_id}",
        sender=Person(id=chat),
        post=Post(id="p7", url="https://social.test/wall-1_7"),
        comment_id=comment_id,
        text="price?",
    )


@pytest.mark.parametrize(
    ("event", "msgid"), [(message("c1", "1"), "lb:c1:1"), (_comment(), "lb:post:p7:55")], ids=["message", "comment"]
)
async def test_a_send_run_again_after_its_outcome_was_lost_records_amocrm_s_id(
    r: Rig, event: InboundMessage | InboundComment, msgid: str
) -> None:
    lost = lose_the_first_outcome(r, msgid)
    await r.inbound(event)
    record = await eventually(lambda: r.runtime.store.message(SCOPE, msgid))
    assert lost, "the first outcome was not lost"
    (stored,) = r.amojo.messages_in(f"lb:{event.chat}")
    assert any(q.status == 400 for q in r.amojo.requests if q.method == "POST")  # the second send: a duplicate
    assert record.amocrm_id == stored.id  # found in the chat's history


async def test_a_message_whose_id_was_recovered_can_be_edited(r: Rig) -> None:
    lose_the_first_outcome(r, "lb:c1:1")
    await r.inbound(message("c1", "1"))
    await eventually(lambda: r.runtime.store.message(SCOPE, "lb:c1:1"))
    edit = InboundEdit(
        chat="c1", timestamp=time.time(), dedup_key="e1", sender=Person(id="c1"), message_id="1", text="fixed"
    )
    await r.inbound(edit)
    (stored,) = r.amojo.messages_in("lb:c1")
    edits = await eventually(lambda: stored.edits)
    assert edits[0].message.text == "fixed"


async def test_a_duplicate_whose_history_fails_is_still_relayed_without_amocrm_s_id(r: Rig) -> None:
    lose_the_first_outcome(r, "lb:c1:1")
    r.amojo.fail_next(400, path_contains="/history", times=10)
    await r.inbound(message("c1", "1"))
    record = await eventually(lambda: r.runtime.store.message(SCOPE, "lb:c1:1"))
    assert record.amocrm_id is None
    assert [q.status for q in r.amojo.requests if "/history" in q.path] == [400]
    assert len(r.amojo.messages_in("lb:c1")) == 1
    await eventually(lambda: counts_are(r.runtime.store, queued=0, running=0, dead=0))


async def test_a_duplicate_whose_history_is_down_for_now_looks_again_with_the_next_attempt(r: Rig) -> None:
    lose_the_first_outcome(r, "lb:c1:1")
    r.amojo.fail_next(503, path_contains="/history", times=2)  # both HTTP attempts of one lookup
    await r.inbound(message("c1", "1"))
    await eventually(lambda: counts_are(r.runtime.store, queued=0, running=0, dead=0))
    record = await r.runtime.store.message(SCOPE, "lb:c1:1")
    (stored,) = r.amojo.messages_in("lb:c1")
    assert record is not None and record.amocrm_id == stored.id
    assert [q.status for q in r.amojo.requests if "/history" in q.path] == [503, 503, 200]


async def test_each_conversation_keeps_its_newest_message_for_the_console(r: Rig) -> None:
    await _first_client_message(r, text="need   a\nquote " + "x" * 300)
    (recent,) = await eventually(lambda: r.runtime.store.recent_conversations(SCOPE))
    assert (recent.conversation_id, recent.direction, recent.msgid) == ("lb:c1", "in", "lb:c1:1")
    assert recent.preview.startswith("need a quote xxx") and len(recent.preview) == PREVIEW_CHARS
    answer = await r.amojo.emit_text(SCOPE, "lb:c1", "here it is")
    await eventually(lambda: r.adapter().sent)

    async def answered() -> RecentConversation | None:
        (newest,) = await r.runtime.store.recent_conversations(SCOPE)
        return newest if newest.direction == "out" else None

    newest = await eventually(answered)
    assert (newest.msgid, newest.preview, newest.status) == (answer.message_id, "here it is", 0)
    # A message the messenger refuses is listed as the conversation's newest, failed.
    r.adapter().failures = [MessengerError("bot was blocked by the user", reason="blocked")]
    refused = await r.amojo.emit_text(SCOPE, "lb:c1", "still there?")

    async def failed() -> RecentConversation | None:
        (newest,) = await r.runtime.store.recent_conversations(SCOPE)
        return newest if newest.msgid == refused.message_id else None

    assert (await eventually(failed)).status == -1
    (source,) = await r.runtime.store.source_activity(SCOPE)
    assert source.instance == "lb" and source.last_in is not None and source.last_out is not None
