"""Hostile input against the running `hub api`: every bad value is a located 4xx with an
`error_id`, and nothing is stored (issue 8, part 4 and the input edges of part 6)."""

from __future__ import annotations

import asyncio
import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.helpers import Api

EMAIL = {"type": "email", "subject": "S", "message": "M"}


def session(transport: dict[str, Any] | None = None, audience: list[Any] | None = None,
            **top: Any) -> dict[str, Any]:
    return {"transport": {**EMAIL, **(transport or {})},
            "audience": audience or ["a@example.com"], **top}


def cursor(values: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(values).encode()).decode().rstrip("=")


def nested(depth: int) -> bytes:
    return b'{"transport": {"type": "email", "subject": "S", "message": "M", "extras": {"x": ' + (
        b"[" * depth + b"]" * depth) + b'}}, "audience": ["a@example.com"]}'


FUTURE = (datetime.now(UTC) + timedelta(days=1)).isoformat()
# (method, path, JSON body or raw bytes, extra headers, status, error_id, a loc in details)
Case = tuple[str, str, Any, dict[str, str], int, str, list[Any]]
CASES: dict[str, Case] = {
    "nul-in-message": ("POST", "/v1/sessions", session({"message": "a\x00b"}), {},
                       422, "invalid-instruction", ["transport", "message"]),
    "nul-in-subject": ("POST", "/v1/sessions", session({"subject": "\x00"}), {},
                       422, "invalid-instruction", ["transport", "subject"]),
    "nul-in-xref": ("POST", "/v1/sessions", session(xref="x\x00"), {},
                    422, "invalid-instruction", ["xref"]),
    "nul-in-display-name": ("POST", "/v1/sessions", session(audience=["A\x00 <a@example.com>"]),
                            {}, 422, "invalid-instruction", ["audience", 0]),
    "surrogate-in-message": ("POST", "/v1/sessions", session({"message": "a\ud800"}), {},
                             422, "invalid-instruction", ["transport", "message"]),
    "surrogate-in-address": ("POST", "/v1/sessions", session(audience=["\udfff@example.com"]),
                             {}, 422, "invalid-instruction", ["audience", 0]),
    "surrogate-in-extras-key": ("POST", "/v1/sessions", session({"extras": {"\ud800": 1}}), {},
                                422, "invalid-instruction", ["transport", "extras", "\\ud800"]),
    "nan-in-extras": ("POST", "/v1/sessions",
                      b'{"transport": {"type": "email", "subject": "S", "message": "M",'
                      b' "extras": {"x": NaN}}, "audience": ["a@example.com"]}', {},
                      400, "malformed-json", ["transport", "extras", "x"]),
    "infinity-in-options": ("POST", "/v1/sessions",
                            b'{"transport": {"type": "email", "subject": "S", "message": "M"},'
                            b' "audience": ["a@example.com"], "options": {"retries": -Infinity}}',
                            {}, 400, "malformed-json", ["options", "retries"]),
    "overflowing-float": ("POST", "/v1/sessions",
                          b'{"transport": {"type": "email", "subject": "S", "message": "M",'
                          b' "extras": {"x": [1e999]}}, "audience": ["a@example.com"]}', {},
                          400, "malformed-json", ["transport", "extras", "x", 0]),
    "nested-1000": ("POST", "/v1/sessions", nested(1000), {}, 400, "json-too-deep", []),
    "nested-100000": ("POST", "/v1/sessions", nested(100_000), {}, 400, "json-too-deep", []),
    "far-future-timestamp": ("POST", "/v1/sessions", session(options={
        "trigger": "scheduled", "scheduledTimestamp": "9999-12-31T23:59:59.5Z"}), {},
        422, "invalid-instruction", ["options", "scheduledTimestamp"]),
    "past-timestamp": ("POST", "/v1/sessions", session(options={
        "trigger": "scheduled", "scheduledTimestamp": "2020-01-01T00:00:00Z"}), {},
        422, "invalid-instruction", ["options", "scheduledTimestamp"]),
    "retries-true": ("POST", "/v1/sessions", session(options={"retries": True}), {},
                     422, "invalid-instruction", ["options", "retries"]),
    "retries-string": ("POST", "/v1/sessions", session(options={"retries": "3"}), {},
                       422, "invalid-instruction", ["options", "retries"]),
    "interval-bool": ("POST", "/v1/sessions", session(options={"retryIntervalMinutes": True}), {},
                      422, "invalid-instruction", ["options", "retryIntervalMinutes"]),
    "interval-nan-string": ("POST", "/v1/sessions",
                            session(options={"retryIntervalMinutes": "15,nan"}), {},
                            422, "invalid-instruction", ["options", "retryIntervalMinutes"]),
    "webhook-url-bad-ipv6": ("POST", "/v1/sessions", session(options={"webhookUrl": "http://[::1/"}),
                             {}, 422, "invalid-instruction", ["options", "webhookUrl"]),
    "file-url-bad-ipv6": ("POST", "/v1/sessions", session({"fileUrl": "http://[::1/x.wav"}), {},
                          422, "invalid-instruction", ["transport", "fileUrl"]),
    "text-plain-body": ("POST", "/v1/sessions", json.dumps(session()).encode(),
                        {"Content-Type": "text/plain"}, 415, "unsupported-media-type",
                        ["header", "Content-Type"]),
    "nul-in-transport-name": ("POST", "/v1/transports", {
        "name": "smtp\x00", "type": "email",
        "config": {"host": "127.0.0.1", "port": 25, "from": "a@example.com"}}, {},
        422, "invalid-body", ["name"]),
    "nul-in-transport-config": ("POST", "/v1/transports", {
        "name": "smtp2", "type": "email",
        "config": {"host": "127.0.0.1", "port": 25, "from": "a@example.com", "username": "\x00"}},
        {}, 422, "invalid-body", ["config", "username"]),
    "duplicate-suppressions": ("POST", "/v1/suppressions",
                               {"addresses": ["a@example.com", "A@example.com"]}, {},
                               422, "invalid-body", ["addresses", 1]),
    "nul-in-suppression": ("POST", "/v1/suppressions", {"addresses": ["a\x00@example.com"]}, {},
                           422, "invalid-body", ["addresses", 0]),
    "nul-in-query": ("GET", "/v1/sessions?xref=a%00b", None, {}, 400, "bad-parameter",
                     ["query", "xref"]),
    "nul-in-deliveries-query": ("GET", "/v1/sessions/{sid}/deliveries?address=%00", None, {},
                                400, "bad-parameter", ["query", "address"]),
    "nul-in-path": ("GET", "/v1/sessions/{sid}/deliveries/a%00b/attempts", None, {}, 400,
                    "bad-parameter", ["path", "address"]),
    "limit-superscript-two": ("GET", "/v1/sessions?limit=%C2%B2", None, {}, 400, "bad-parameter",
                              ["query", "limit"]),
    "created-from-out-of-range": ("GET", "/v1/sessions?createdFrom=0001-01-01T00:00:00%2B01:00",
                                  None, {}, 400, "bad-parameter", ["query", "createdFrom"]),
    "cursor-garbage": ("GET", "/v1/sessions?cursor=%21%21%21", None, {}, 400, "bad-cursor",
                       ["query", "cursor"]),
    "cursor-forged-types": ("GET", f"/v1/sessions?cursor={cursor(['x', 'y'])}", None, {}, 400,
                            "bad-cursor", ["query", "cursor"]),
    "cursor-forged-huge-id": ("GET", f"/v1/sessions/{{sid}}/deliveries?cursor={cursor([2**70])}",
                              None, {}, 400, "bad-cursor", ["query", "cursor"]),
    "cursor-forged-string-id": ("GET", f"/v1/sessions/{{sid}}/deliveries?cursor={cursor(['a'])}",
                                None, {}, 400, "bad-cursor", ["query", "cursor"]),
    "cursor-forged-suppressions": ("GET", f"/v1/suppressions?cursor={cursor(['x', 'y'])}",
                                   None, {}, 400, "bad-cursor", ["query", "cursor"]),
    "multipart-without-boundary": ("POST", "/v1/callbacks/twilio/{tid}", b"x=1",
                                   {"Content-Type": "multipart/form-data"}, 400, "malformed-body",
                                   ["body"]),
}


async def raw_request(base: str, head: bytes, body: bytes = b"") -> tuple[int, Any]:
    """One HTTP/1.1 request written byte for byte (headers aiohttp's client would refuse)."""
    url = urlsplit(base)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    writer.write(head + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    _, _, payload = rest.partition(b"\r\n\r\n")
    try:
        return int(status_line.split()[1]), json.loads(payload)
    except ValueError:
        return int(status_line.split()[1]), payload.decode(errors="replace")


async def stored(db: Any) -> dict[str, int]:
    return {t: await db.fetchval(f"SELECT count(*) FROM {t}")
            for t in ("sessions", "deliveries", "suppressions", "transports", "idempotency_keys")}


@pytest.fixture
async def targets(api: Api, email_transport: dict[str, Any],
                  twilio_transport: Any) -> dict[str, str]:
    """A session and a Twilio transport of the app, for the paths that need real ids."""
    created = await api.submit(session(options={"trigger": "manual"}))
    twilio = await twilio_transport()
    return {"sid": created["sessionId"], "tid": twilio["id"]}


def assert_located(status: int, err: Any, expect: int, error_id: str, loc: list[Any]) -> None:
    assert status == expect, err
    assert err["error_id"] == error_id, err
    assert isinstance(err["details"], list) and err["details"], err
    assert loc in [d["loc"] for d in err["details"]], err["details"]


@pytest.mark.parametrize("name", list(CASES))
async def test_bad_input_is_a_located_4xx_and_stores_nothing(
    api: Api, db: Any, targets: dict[str, str], name: str
) -> None:
    method, path, body, headers, expect, error_id, loc = CASES[name]
    before = await stored(db)
    path = path.format(**targets)
    if isinstance(body, bytes):
        status, err = await api.call(method, path, raw=body, headers=headers)
    else:
        status, err = await api.call(method, path, body, headers=headers)
    assert_located(status, err, expect, error_id, loc)
    assert await stored(db) == before


@pytest.mark.parametrize(("header", "expect", "error_id"), [
    (b"Authorization: Bearer hub_\xff\xfe", 401, "invalid-api-key"),
    (b"Idempotency-Key: k\xff\xfe", 400, "bad-idempotency-key"),
])
async def test_non_utf8_headers_are_refused(
    api: Api, db: Any, email_transport: dict[str, Any], header: bytes, expect: int, error_id: str
) -> None:
    body = json.dumps(session()).encode()
    auth = b"" if header.startswith(b"Authorization") else b"Authorization: Bearer %s\r\n" % (
        api.key.encode())
    head = (b"POST /v1/sessions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + auth + header + b"\r\n")
    before = await stored(db)
    status, err = await raw_request(api.base, head, body)
    name = header.split(b":")[0].decode()
    assert_located(status, err, expect, error_id, ["header", name])
    assert await stored(db) == before


async def test_undecodable_query_bytes_never_reach_the_store(api: Api) -> None:
    """Bytes that are not UTF-8 (an encoded lone surrogate) are read as U+FFFD: no match,
    no error. Raw bytes of that kind are refused by the HTTP parser itself (400)."""
    status, body = await api.get("/v1/suppressions?address=%ED%A0%80")
    assert status == 200 and body["items"] == []
    status, _ = await raw_request(api.base, b"GET /v1/suppressions?address=\xed\xa0\x80 HTTP/1.1\r\n"
                                  b"Host: x\r\nAuthorization: Bearer " + api.key.encode() + b"\r\n")
    assert status == 400


async def test_a_small_clock_skew_is_allowed_for_scheduled_sessions(
    api: Api, email_transport: dict[str, Any]
) -> None:
    """A scheduledTimestamp up to 60 s in the past is "now" on a client with a slow clock."""
    just_past = (datetime.now(UTC) - timedelta(seconds=20)).isoformat()
    created = await api.submit(session(options={"trigger": "scheduled",
                                                "scheduledTimestamp": just_past}))
    assert created["status"] in ("scheduled", "queued", "running", "completed")
    created = await api.submit(session(options={"trigger": "scheduled",
                                                "scheduledTimestamp": FUTURE}))
    assert created["status"] == "scheduled"


async def test_phone_numbers_with_letters_are_refused(
    api: Api, db: Any, twilio_transport: Any
) -> None:
    await twilio_transport()
    status, err = await api.post("/v1/sessions", {
        "transport": {"type": "sms", "message": "hi"},
        "audience": ["+14155550123", "+1-800-FLOWERS", "+1 415 555 O1OO"]})
    assert status == 422, err
    assert [d["loc"] for d in err["details"]] == [["audience", 1], ["audience", 2]]
    assert "letters" in err["details"][0]["msg"]
    assert await db.fetchval("SELECT count(*) FROM sessions") == 0


async def test_a_json_body_needs_a_json_media_type(api: Api, email_transport: dict[str, Any]) -> None:
    body = json.dumps(session()).encode()
    status, err = await api.post("/v1/sessions", raw=body,
                                 headers={"Content-Type": "application/octet-stream"})
    assert status == 415 and err["error_id"] == "unsupported-media-type", err
    assert "application/json" in err["message"]
    status, _ = await api.post("/v1/sessions", raw=body,
                               headers={"Content-Type": "application/json; charset=utf-8"})
    assert status == 201


async def test_renaming_a_transport_to_a_taken_name_is_409(
    api: Api, email_transport: dict[str, Any], smtp_sink: Any
) -> None:
    port, _ = smtp_sink
    status, other = await api.post("/v1/transports", {
        "name": "second", "type": "email",
        "config": {"host": "127.0.0.1", "port": port, "from": "a@example.com"}})
    assert status == 201, other
    status, err = await api.call("PATCH", f"/v1/transports/{other['id']}",
                                 {"name": email_transport["name"]})
    assert status == 409 and err["error_id"] == "transport-name-taken", err
    assert (await api.get(f"/v1/transports/{other['id']}"))[1]["name"] == "second"
