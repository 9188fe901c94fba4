"""Signing of requests to amojo and verification of amoCRM's webhooks (spec §2 and §3)."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

import amoconnect.signing
from amoconnect.signing import CONTENT_TYPE, EMPTY_MD5, format_date, sign_request, signature_for, verify_signature

SECRET = "0123456789abcdef0123456789abcdef01234567"
SCOPE = "11111111-2222-3333-4444-555555555555_66666666-7777-8888-9999-000000000000"
TYPING_PATH = f"/v2/origin/custom/{SCOPE}/typing"
HISTORY_PATH = f"/v2/origin/custom/{SCOPE}/chats/8e4d4baa-9e6c-4a88-838a-5f62be227bdc/history"
SPEC_DATE = "Mon, 02 Mar 2026 09:30:00 +0000"
TYPING_BODY = b'{"conversation_id":"tg-100200300","sender":{"id":"tg-user-42"}}'
TYPING_MD5 = "9235c12bc8aac90e7ea7370f494cc149"
TYPING_SIG = "bda1f78e1179e743392cc41266133921faee612c"
HISTORY_SIG = "22bef22760c0a819f9ff66d5d36902c2e23b59e1"
SPEC_HOOK = (
    b'{"account_id":"52e591f7-c98f-4255-8495-827210138c81","time":1639572261,"message":{"conversation":'
    b'{"id":"8e4d4baa","client_id":"tg-100200300"},"sender":{"id":"76fc2bea"},"receiver":{"id":"2ed64e26",'
    b'"client_id":"tg-user-42"},"timestamp":1639572260,"msec_timestamp":1639572260980,"message":'
    b'{"id":"0371a0ff","type":"text","text":"Hello"}}}'
)
SPEC_HOOK_SIG = "e4ee2370f5f76496e9a589cee24182cfc99d8373"


def _hook_signature(key: bytes, body: bytes) -> str:
    return hmac.new(key, body, hashlib.sha1).hexdigest()


def _hmac_of(key: bytes, *parts: str) -> str:
    """The signature as a hand-written client computes it, with no guard against mistakes."""
    return hmac.new(key, "\n".join(parts).encode(), hashlib.sha1).hexdigest()


# -- the spec's vectors -------------------------------------------------------------------------------


def test_spec_vector_post_typing() -> None:
    headers = sign_request(SECRET, "POST", TYPING_PATH, TYPING_BODY, date=SPEC_DATE)
    assert headers == {
        "Date": SPEC_DATE,
        "Content-Type": "application/json",
        "Content-MD5": TYPING_MD5,
        "X-Signature": TYPING_SIG,
    }


def test_spec_vector_get_history_hashes_the_empty_string() -> None:
    headers = sign_request(SECRET, "GET", HISTORY_PATH, date=SPEC_DATE)
    assert headers["Content-MD5"] == EMPTY_MD5 == "d41d8cd98f00b204e9800998ecf8427e"
    assert headers["X-Signature"] == HISTORY_SIG
    assert sign_request(SECRET, "GET", HISTORY_PATH, b"", date=SPEC_DATE) == headers


def test_spec_vector_webhook() -> None:
    assert verify_signature(SECRET, SPEC_HOOK, SPEC_HOOK_SIG)
    assert _hook_signature(SECRET.encode("ascii"), SPEC_HOOK) == SPEC_HOOK_SIG


def test_signature_for_reproduces_the_vectors() -> None:
    assert signature_for(SECRET, "POST", TYPING_MD5, CONTENT_TYPE, SPEC_DATE, TYPING_PATH) == TYPING_SIG
    assert signature_for(SECRET, "GET", EMPTY_MD5, CONTENT_TYPE, SPEC_DATE, HISTORY_PATH) == HISTORY_SIG


def test_method_is_signed_upper_case() -> None:
    assert sign_request(SECRET, "post", TYPING_PATH, TYPING_BODY, date=SPEC_DATE)["X-Signature"] == TYPING_SIG


def test_signature_and_md5_are_lowercase_hex() -> None:
    headers = sign_request(SECRET, "POST", TYPING_PATH, TYPING_BODY)
    for name in ("Content-MD5", "X-Signature"):
        assert headers[name] == headers[name].lower()
        int(headers[name], 16)


# -- Date ------------------------------------------------------------------------------------------------


def test_format_date_is_rfc2822_with_numeric_utc_zone() -> None:
    assert format_date(datetime(2026, 3, 2, 9, 30, tzinfo=UTC)) == SPEC_DATE


def test_format_date_converts_other_zones_to_utc() -> None:
    moscow = timezone(timedelta(hours=3))
    assert format_date(datetime(2026, 3, 2, 12, 30, tzinfo=moscow)) == SPEC_DATE


def test_format_date_takes_naive_as_utc_and_drops_microseconds() -> None:
    assert format_date(datetime(2026, 3, 2, 9, 30, 0, 999_999)) == SPEC_DATE


def test_format_date_defaults_to_now() -> None:
    text = format_date()
    assert text.endswith(" +0000")
    assert "GMT" not in text
    assert abs((parsedate_to_datetime(text) - datetime.now(UTC)).total_seconds()) < 5


def test_format_date_now_follows_the_clock_second_by_second(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [datetime(2026, 3, 2, 9, 30, tzinfo=UTC).timestamp()]
    monkeypatch.setattr(amoconnect.signing, "time", SimpleNamespace(time=lambda: now[0]))
    assert format_date() == SPEC_DATE
    now[0] += 0.9
    assert format_date() == SPEC_DATE
    now[0] += 0.2
    assert format_date() == "Mon, 02 Mar 2026 09:30:01 +0000"
    now[0] -= 3600  # the clock may be set back
    assert format_date() == "Mon, 02 Mar 2026 08:30:01 +0000"
    assert sign_request(SECRET, "POST", TYPING_PATH, TYPING_BODY)["Date"] == "Mon, 02 Mar 2026 08:30:01 +0000"


def test_sign_request_accepts_a_datetime() -> None:
    when = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
    assert sign_request(SECRET, "POST", TYPING_PATH, TYPING_BODY, date=when)["X-Signature"] == TYPING_SIG


def test_sign_request_defaults_to_a_current_date() -> None:
    headers = sign_request(SECRET, "POST", TYPING_PATH, TYPING_BODY)
    assert abs((parsedate_to_datetime(headers["Date"]) - datetime.now(UTC)).total_seconds()) < 5
    recomputed = signature_for(SECRET, "POST", TYPING_MD5, CONTENT_TYPE, headers["Date"], TYPING_PATH)
    assert headers["X-Signature"] == recomputed


def test_a_given_content_md5_is_signed_as_given() -> None:
    """A retry signs again with the hash of the first attempt: the body is not hashed again."""
    given = sign_request(SECRET, "POST", TYPING_PATH, TYPING_BODY, date=SPEC_DATE, content_md5=TYPING_MD5)
    assert given == sign_request(SECRET, "POST", TYPING_PATH, TYPING_BODY, date=SPEC_DATE)
    assert given["X-Signature"] == TYPING_SIG
    other = sign_request(SECRET, "POST", TYPING_PATH, TYPING_BODY, date=SPEC_DATE, content_md5="0" * 32)
    assert other["Content-MD5"] == "0" * 32 and other["X-Signature"] != TYPING_SIG


def test_date_is_signed_as_text() -> None:
    """The GMT spelling of the same instant signs differently: send the Date exactly as signed."""
    gmt = sign_request(SECRET, "POST", TYPING_PATH, TYPING_BODY, date="Mon, 02 Mar 2026 09:30:00 GMT")
    assert gmt["X-Signature"] != TYPING_SIG


# -- path and query string ----------------------------------------------------------------------------


def test_query_string_is_cut_before_signing() -> None:
    bare = sign_request(SECRET, "GET", HISTORY_PATH, date=SPEC_DATE)
    with_query = sign_request(SECRET, "GET", HISTORY_PATH + "?offset=0&limit=50", date=SPEC_DATE)
    assert with_query == bare
    assert with_query["X-Signature"] == HISTORY_SIG


def test_signature_for_refuses_a_query_string() -> None:
    with pytest.raises(ValueError, match="query string"):
        signature_for(SECRET, "GET", EMPTY_MD5, CONTENT_TYPE, SPEC_DATE, HISTORY_PATH + "?offset=0&limit=50")


# -- properties ---------------------------------------------------------------------------------------------

methods = st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE"])
path_chars = st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="?")
paths = st.text(path_chars, min_size=1, max_size=60).map(lambda s: "/" + s)
dates = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31), timezones=st.just(UTC)).map(
    format_date
)
bodies = st.binary(max_size=300)


def _mutate(data: bytes, index: int, delta: int) -> bytes:
    """``data`` with the byte at ``index`` changed (``delta`` in 1..255, so it always differs)."""
    index %= len(data)
    return data[:index] + bytes([(data[index] + delta) % 256]) + data[index + 1 :]


def _mutate_text(text: str, index: int, replacement: str) -> str:
    index %= len(text)
    return text[:index] + replacement + text[index + 1 :]


@given(methods, paths, bodies, dates)
def test_sign_then_verify_round_trip(method: str, path: str, body: bytes, date: str) -> None:
    headers = sign_request(SECRET, method, path, body, date=date)
    assert headers["Date"] == date
    assert headers["Content-Type"] == CONTENT_TYPE
    assert headers["Content-MD5"] == hashlib.md5(body).hexdigest()
    recomputed = signature_for(SECRET, method, headers["Content-MD5"], headers["Content-Type"], headers["Date"], path)
    assert hmac.compare_digest(recomputed, headers["X-Signature"])


@given(bodies)
def test_webhook_sign_then_verify_round_trip(body: bytes) -> None:
    assert verify_signature(SECRET, body, _hook_signature(SECRET.encode("ascii"), body))


@given(methods, paths, bodies.filter(bool), dates, st.integers(min_value=0), st.integers(min_value=1, max_value=255))
def test_any_body_byte_change_changes_the_signature(
    method: str, path: str, body: bytes, date: str, index: int, delta: int
) -> None:
    original = sign_request(SECRET, method, path, body, date=date)
    changed = sign_request(SECRET, method, path, _mutate(body, index, delta), date=date)
    assert changed["Content-MD5"] != original["Content-MD5"]
    assert changed["X-Signature"] != original["X-Signature"]


@given(methods, paths, bodies, dates, st.integers(min_value=0), path_chars)
def test_any_path_change_changes_the_signature(
    method: str, path: str, body: bytes, date: str, index: int, char: str
) -> None:
    changed_path = _mutate_text(path, index, char)
    if changed_path == path:
        return
    original = sign_request(SECRET, method, path, body, date=date)
    assert sign_request(SECRET, method, changed_path, body, date=date)["X-Signature"] != original["X-Signature"]


@given(methods, paths, bodies, dates, st.integers(min_value=0), st.characters(min_codepoint=0x20, max_codepoint=0x7E))
def test_any_method_change_changes_the_signature(
    method: str, path: str, body: bytes, date: str, index: int, char: str
) -> None:
    changed_method = _mutate_text(method, index, char)
    if changed_method.upper() == method:  # the method is signed upper-case, so case is no change
        return
    original = sign_request(SECRET, method, path, body, date=date)
    assert sign_request(SECRET, changed_method, path, body, date=date)["X-Signature"] != original["X-Signature"]


@given(methods, paths, bodies, dates, st.integers(min_value=0), st.characters(min_codepoint=0x20, max_codepoint=0x7E))
def test_any_date_change_changes_the_signature(
    method: str, path: str, body: bytes, date: str, index: int, char: str
) -> None:
    changed_date = _mutate_text(date, index, char)
    if changed_date == date:
        return
    original = sign_request(SECRET, method, path, body, date=date)
    assert sign_request(SECRET, method, path, body, date=changed_date)["X-Signature"] != original["X-Signature"]


@given(bodies, st.integers(min_value=0), st.integers(min_value=1, max_value=255))
def test_webhook_byte_change_fails_verification(body: bytes, index: int, delta: int) -> None:
    signature = _hook_signature(SECRET.encode("ascii"), body)
    changed = _mutate(body, index, delta) if body else b"x"
    assert not verify_signature(SECRET, changed, signature)


# -- verify_signature never raises on a malformed header --------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        SPEC_HOOK_SIG[:-1],  # 39 characters
        SPEC_HOOK_SIG + "0",  # 41 characters
        SPEC_HOOK_SIG + "\n",
        " " + SPEC_HOOK_SIG[1:],
        "z" * 40,
        "g" + SPEC_HOOK_SIG[1:],
        "sha1=" + SPEC_HOOK_SIG[5:],
        "0" * 40,
        "٠" * 40,  # Arabic-Indic digits: decimal, but not hex
    ],
)
def test_verify_signature_is_false_for_a_malformed_header(header: str | None) -> None:
    assert verify_signature(SECRET, SPEC_HOOK, header) is False


def test_verify_signature_accepts_upper_case_hex() -> None:
    assert verify_signature(SECRET, SPEC_HOOK, SPEC_HOOK_SIG.upper()) is True


@given(st.text(max_size=60))
def test_verify_signature_never_raises(header: str) -> None:
    assert verify_signature(SECRET, SPEC_HOOK, header) is (header.lower() == SPEC_HOOK_SIG)


def test_verify_signature_with_another_secret_fails() -> None:
    assert not verify_signature("f" * 40, SPEC_HOOK, SPEC_HOOK_SIG)


# -- the mistakes other amojo clients make ----------------------------------------------------------------


def test_verifying_reencoded_json_instead_of_raw_bytes_fails() -> None:
    raw = '{"account_id":"acc","time":1,"message":{"message":{"type":"text","text":"Привет / 👋"}}}'.encode()
    signature = _hook_signature(SECRET.encode("ascii"), raw)
    assert verify_signature(SECRET, raw, signature)
    decoded = json.loads(raw)
    for reencoded in (
        json.dumps(decoded).encode(),  # spaces after separators, \u escapes
        json.dumps(decoded, separators=(",", ":")).encode(),  # compact, but \u escapes
        json.dumps(decoded, separators=(",", ":"), ensure_ascii=False, sort_keys=True).encode(),  # key order
    ):
        assert reencoded != raw
        assert not verify_signature(SECRET, reencoded, signature)


def test_verifying_the_spec_hook_reencoded_fails() -> None:
    reencoded = json.dumps(json.loads(SPEC_HOOK)).encode()
    assert not verify_signature(SECRET, reencoded, SPEC_HOOK_SIG)


def test_a_signature_over_the_body_or_the_body_less_one_trailing_newline_passes() -> None:
    raw = SPEC_HOOK + b"\n"
    signature = _hook_signature(SECRET.encode("ascii"), raw)
    assert verify_signature(SECRET, raw, signature)
    assert not verify_signature(SECRET, raw.strip(), signature)  # the newline it covers is missing
    # A body sent with a trailing newline the signature does not cover (as other amojo clients accept):
    assert verify_signature(SECRET, SPEC_HOOK + b"\n", SPEC_HOOK_SIG)


@pytest.mark.parametrize(
    "sent",
    [
        SPEC_HOOK + b"\n\n",  # two newlines: only one may be left out
        SPEC_HOOK + b"\r\n",
        SPEC_HOOK + b" ",
        SPEC_HOOK + b"\t",
        b"\n" + SPEC_HOOK,
        SPEC_HOOK[:-1],
        SPEC_HOOK + b"\n" + b"x",
    ],
    ids=["two-newlines", "crlf", "space", "tab", "leading-newline", "cut", "newline-then-byte"],
)
def test_nothing_else_than_one_trailing_newline_is_forgiven(sent: bytes) -> None:
    assert not verify_signature(SECRET, sent, SPEC_HOOK_SIG)


@pytest.mark.parametrize("hashed", [b'""', b"[]", b"{}", b"null"])
def test_hashing_a_json_empty_value_for_get_differs_from_the_vector(hashed: bytes) -> None:
    wrong = sign_request(SECRET, "GET", HISTORY_PATH, hashed, date=SPEC_DATE)
    assert wrong["Content-MD5"] != EMPTY_MD5
    assert wrong["X-Signature"] != HISTORY_SIG


def test_query_string_in_the_signed_path_differs_from_the_vector() -> None:
    wrong = _hmac_of(SECRET.encode("ascii"), "GET", EMPTY_MD5, CONTENT_TYPE, SPEC_DATE, HISTORY_PATH + "?offset=0")
    right = _hmac_of(SECRET.encode("ascii"), "GET", EMPTY_MD5, CONTENT_TYPE, SPEC_DATE, HISTORY_PATH)
    assert right == HISTORY_SIG
    assert wrong != HISTORY_SIG
    with pytest.raises(ValueError, match="query string"):  # signature_for refuses to make this mistake
        signature_for(SECRET, "GET", EMPTY_MD5, CONTENT_TYPE, SPEC_DATE, HISTORY_PATH + "?offset=0")


def test_hex_decoded_secret_differs_from_the_vector() -> None:
    hex_key = bytes.fromhex(SECRET)
    assert _hmac_of(hex_key, "POST", TYPING_MD5, CONTENT_TYPE, SPEC_DATE, TYPING_PATH) != TYPING_SIG
    assert _hmac_of(SECRET.encode("ascii"), "POST", TYPING_MD5, CONTENT_TYPE, SPEC_DATE, TYPING_PATH) == TYPING_SIG
    assert not verify_signature(SECRET, SPEC_HOOK, _hook_signature(hex_key, SPEC_HOOK))


def test_signing_a_dict_reencoded_after_hashing_breaks_the_md5() -> None:
    headers = sign_request(SECRET, "POST", TYPING_PATH, TYPING_BODY, date=SPEC_DATE)
    sent = json.dumps(json.loads(TYPING_BODY)).encode()  # what an HTTP client's json= would send
    assert hashlib.md5(sent).hexdigest() != headers["Content-MD5"]
