"""Template review: amoCRM's account webhook → a template on Meta → Meta's verdict back to amoCRM."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from amoconnect.amocrm import AmoCRMClient, ChatTemplate, TemplateButton
from amoconnect.logging import scrubber
from amoconnect.plugins import collect_messengers, get_plugin_manager
from amoconnect.sources import desired_sources, sync_sources
from amoconnect.testing.kit import eventually
from whatsapp_peer import peer_check
from whatsapp_rig import World, world

from amoconnect_whatsapp.review import encode_review_hook, meta_template, parse_form, review_requests

pytestmark = pytest.mark.anyio


def test_form_with_brackets_becomes_review_requests() -> None:
    body = encode_review_hook(
        {"id": 17, "type": "waba", "content": "Hi", "reviews": [{"id": 5, "source_id": 9, "status": "review"}]}
    )
    assert b"add%5B0%5D%5Breviews%5D%5B0%5D%5Bid%5D=5" in body
    form = parse_form(body)
    assert form["add"][0]["reviews"][0] == {"id": "5", "source_id": "9", "status": "review"}
    requests = review_requests(form)
    assert [(r.template_id, r.review_id, r.source_id) for r in requests] == [(17, 5, 9)]
    nested = parse_form(b"chat_template_review[add][0][id]=3&chat_template_review[add][0][reviews][0][id]=4")
    assert [(r.template_id, r.review_id) for r in review_requests(nested)] == [(3, 4)]
    assert review_requests(parse_form(b"account[id]=1")) == []


def test_amocrm_template_becomes_meta_request() -> None:
    template = ChatTemplate(
        id=12,
        name="Order ready!",
        content="Order {{lead.id}} for {{contact.name}} is ready, {{contact.name}}",
        type="waba",
        waba_category="utility",
        waba_language="en_US",
        waba_header="Hello {{contact.name}}",
        waba_footer="The shop",
        waba_examples={"{{lead.id}}": "42", "{{contact.name}}": "Anna"},
        buttons=[TemplateButton(type="inline", text="OK"), TemplateButton(type="url", text="Track", url="https://x.y")],
    )
    request, ref = meta_template(template)
    assert request["name"] == "order_ready_12" and request["category"] == "UTILITY"
    header, body, footer, buttons = request["components"]
    assert header == {
        "type": "HEADER",
        "format": "TEXT",
        "text": "Hello {{1}}",
        "example": {"header_text": ["Anna"]},
    }
    assert body["text"] == "Order {{1}} for {{2}} is ready, {{2}}"
    assert body["example"] == {"body_text": [["42", "Anna"]]}
    assert footer == {"type": "FOOTER", "text": "The shop"}
    assert buttons["buttons"] == [
        {"type": "QUICK_REPLY", "text": "OK"},
        {"type": "URL", "text": "Track", "url": "https://x.y"},
    ]
    assert ref.body == ("lead.id", "contact.name") and ref.header == ("contact.name",)


async def _prepare(w: World, footer: str = "The shop") -> tuple[AmoCRMClient, ChatTemplate, list[Any]]:
    """Sources synced, a waba template created and sent to review in the fake amoCRM; the hook posted."""
    token = next(iter(w.amocrm.access_tokens))
    client = AmoCRMClient(w.amocrm.base_url, tokens=token, client=w.adapter().context.http)
    messengers = collect_messengers(get_plugin_manager(only="whatsapp"))
    account = w.runtime.config.account("main")
    result = await sync_sources(client, desired_sources(w.runtime.config, account, messengers))
    assert sorted(result.created) == ["second-number", "wa1"]
    services = [s["services"][0] for s in w.amocrm.sources.values()]
    assert all(
        s["type"] == "whatsapp" and s["params"] == {"waba": True, "is_supports_list_message": True} for s in services
    )
    (template,) = await client.create_templates(
        [
            ChatTemplate(
                name="Order ready",
                content="Order {{lead.id}} is ready, {{contact.name}}",
                type="waba",
                waba_category="UTILITY",
                waba_language="en_US",
                waba_footer=footer,
                waba_examples={"{{lead.id}}": "42", "{{contact.name}}": "Anna"},
                buttons=[TemplateButton(type="inline", text="Thanks")],
            )
        ]
    )
    assert template.id is not None
    reviews = await client.send_template_to_review(template.id)
    hook = w.amocrm.webhooks
    (destination,) = hook
    assert hook[destination]["settings"] == ["add_chat_template_review"]
    assert destination.startswith("http://amoconnect/hooks/whatsapp/wa1/template-review?token=")
    # The generated token is in no configuration, yet no log line shows it.
    assert scrubber([])(destination).endswith("?token=[redacted]")
    wrong = await w.runtime.client.post(
        "/hooks/whatsapp/wa1/template-review?token=guess", content=b"add[0][id]=1", headers=_FORM
    )
    assert wrong.status_code == 403
    stored = w.amocrm.templates[template.id]
    listed = [{"id": r.id, "source_id": r.source_id, "status": r.status} for r in reviews]
    body = encode_review_hook({**stored, "reviews": listed})
    answer = await w.runtime.client.post(destination.removeprefix("http://amoconnect"), content=body, headers=_FORM)
    assert answer.status_code == 200
    return client, template, reviews


_FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def _review_status(w: World, template_id: int, source: str) -> str:
    sources = {sid: s["external_id"] for sid, s in w.amocrm.sources.items()}
    for review in w.amocrm.templates[template_id]["reviews"]:
        if sources[review["source_id"]] == source:
            return str(review["status"])
    raise AssertionError("no review")


async def test_review_created_on_meta_and_approved_by_polling(tmp_path: Path) -> None:
    async with world(tmp_path, template_review=True) as w:
        client, template, _ = await _prepare(w)
        assert template.id is not None
        created = await eventually(lambda: list(w.fake.templates.values()))
        meta = created[0]
        assert meta.name == f"order_ready_{template.id}" and meta.status == "PENDING"
        assert meta.components[0]["text"] == "Order {{1}} is ready, {{2}}"
        await eventually(lambda: w.amocrm.templates[template.id].get("external_id") == f"{meta.name}:en_US")
        meta.status = "APPROVED"  # Meta decided; the webhook is lost (no WABA callback): polling finds it
        await eventually(lambda: _review_status(w, template.id, "wa1") == "approved")
        assert _review_status(w, template.id, "second-number") == "review"  # its number does no reviews
        anna = w.fake.add_user("4915100000001")
        await w.fake.client_writes(anna, "hi")
        conversation = await eventually(lambda: w.amojo.find_chat(w.conversation(anna.chat)))
        external_id = w.amocrm.templates[template.id]["external_id"]
        await w.amojo.emit_template(
            w.scope_id,
            conversation.id,
            template.content,
            {"{{contact.name}}": "Anna", "{{lead.id}}": "7"},
            template_id=template.id,
            external_id=external_id,
        )
        sent = await eventually(lambda: [s for s in w.fake.sent_to(anna) if s.type == "template"])
        params = sent[0].body["template"]["components"][0]["parameters"]
        assert [p["text"] for p in params] == ["7", "Anna"]
        await client.aclose()
        # The desk's amoCRM calls take the account's limit, the one the core's REST calls take.
        adapter = w.adapter()
        assert adapter.review is not None
        assert adapter.review.amocrm.limiter is adapter.context.amocrm_limiter
    peer_check(w.fake)


async def test_review_verdict_by_webhook_with_reason(tmp_path: Path) -> None:
    async with world(tmp_path, template_review=True, review_poll=60.0) as w:
        w.fake.set_webhook("http://amoconnect/hooks/whatsapp/wa1", waba_id="2000000001")
        _, template, _ = await _prepare(w)
        assert template.id is not None
        created = await eventually(lambda: list(w.fake.templates.values()))
        await eventually(lambda: w.amocrm.templates[template.id].get("external_id"))
        await w.fake.review_template(created[0].id, "REJECTED", "INVALID_FORMAT")
        await eventually(lambda: _review_status(w, template.id, "wa1") == "rejected")
        reviews = w.amocrm.templates[template.id]["reviews"]
        assert any(r["reject_reason"] == "INVALID_FORMAT" for r in reviews)
        await w.fake.review_template(created[0].id, "APPROVED")
        await eventually(lambda: _review_status(w, template.id, "wa1") == "approved")
        await w.fake.review_template(created[0].id, "PAUSED")
        await eventually(lambda: _review_status(w, template.id, "wa1") == "paused")
    peer_check(w.fake)


async def test_a_template_meta_refuses_is_rejected_with_its_reason(tmp_path: Path) -> None:
    async with world(tmp_path, template_review=True) as w:
        client, template, _ = await _prepare(w, footer="f" * 61)
        assert template.id is not None
        await eventually(lambda: _review_status(w, template.id, "wa1") == "rejected")
        reviews = w.amocrm.templates[template.id]["reviews"]
        assert any("WhatsApp refused it" in r["reject_reason"] and "at most 60" in r["reject_reason"] for r in reviews)
        assert not w.fake.templates
        await client.aclose()
