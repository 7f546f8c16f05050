"""Usage per app and UTC day (`GET /v1/usage`, `hub usage`): the figures of a mixed real
run (email through aiosmtpd, SMS through the Twilio fake, Slack, the HTTP API transport)
plus seeded voice attempts and inbound callbacks, spread over two UTC days, equal sums
computed independently from the rows; another app's rows never count."""

from __future__ import annotations

import json
import math
import uuid
from collections import Counter, defaultdict
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from hub.dev.fake_http import FakeSlack, HttpSink
from hub.dev.fake_twilio import FakeTwilio
from hub.dev.smtp import SmtpSink
from hub.store.apps import NewApp
from tests.conftest import SLACK_TOKEN, Procs
from tests.e2e.test_cli import hub
from tests.helpers import Api

pytestmark = pytest.mark.e2e

DAY1, DAY2 = date(2026, 3, 10), date(2026, 3, 11)
NOON2 = datetime(2026, 3, 11, 12, 0, tzinfo=UTC)
LONG_SMS = "A" * 200  # GSM-7, 200 characters: two segments (153 per part)
FIGURES = ("sessions", "recipients", "attempts", "delivered", "failed", "smsSegments",
           "callsAnswered", "billableSeconds", "inboundCallbacks")


def at(day: date, hh: int, mm: int = 0, ss: float = 0.0) -> datetime:
    return datetime(day.year, day.month, day.day, hh, mm, tzinfo=UTC) + timedelta(seconds=ss)


async def shift(db: asyncpg.Pool, session_ids: list[uuid.UUID], by: timedelta) -> None:
    """Move sessions, their deliveries and attempts in time, as if they ran then."""
    await db.execute(
        "UPDATE sessions SET created_at = created_at + $2, started_at = started_at + $2,"
        " ended_at = ended_at + $2 WHERE id = ANY($1::uuid[])", session_ids, by)
    await db.execute(
        "UPDATE deliveries SET final_at = final_at + $2, last_attempt_at = last_attempt_at + $2"
        " WHERE session_id = ANY($1::uuid[])", session_ids, by)
    await db.execute(
        "UPDATE attempts a SET started_at = a.started_at + $2, ended_at = a.ended_at + $2"
        " FROM deliveries d WHERE d.id = a.delivery_id AND d.session_id = ANY($1::uuid[])",
        session_ids, by)


async def seed_voice(db: asyncpg.Pool, app_id: uuid.UUID, created: datetime, ended: datetime,
                     deliveries: list[tuple[str, str, datetime | None,
                                            list[tuple[datetime, str, float | None]]]]) -> None:
    """A voice session written as the voice controller would leave it: deliveries (address,
    status, final time) with their attempts (start, outcome, talk seconds)."""
    transport = await db.fetchval(
        "SELECT id FROM transports WHERE app_id = $1 AND type = 'voice'", app_id)
    if transport is None:
        transport = uuid.uuid4()
        await db.execute(
            "INSERT INTO transports (id, app_id, name, type, provider, config, secrets)"
            " VALUES ($1, $2, 'seeded-voice', 'voice', 'asterisk', '{}', '{}')",
            transport, app_id)
    sid = uuid.uuid4()
    await db.execute(
        "INSERT INTO sessions (id, app_id, transport_id, transport_type, status, trigger,"
        " instruction, retries, retry_intervals_s, audience_count, duplicates_removed,"
        " created_at, started_at, ended_at) VALUES ($1, $2, $3, 'voice', 'completed',"
        " 'immediate', '{}', 1, '{60}', $4, 0, $5, $5, $6)",
        sid, app_id, transport, len(deliveries), created, ended)
    for address, status, final_at, attempts in deliveries:
        did = await db.fetchval(
            "INSERT INTO deliveries (session_id, address, status, attempts, outcome, final_at,"
            " last_attempt_at) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
            sid, address, status, len(attempts), attempts[-1][1], final_at, attempts[-1][0])
        for n, (start, outcome, talk) in enumerate(attempts, 1):
            detail = {"talkS": talk, "ringS": 3.0} if talk is not None else {"ringS": 20.0}
            await db.execute(
                "INSERT INTO attempts (id, delivery_id, attempt, started_at, ended_at, outcome,"
                " detail, provider_ref) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                uuid.uuid4(), did, n, start, start + timedelta(seconds=(talk or 0) + 5),
                outcome, detail, f"chan-{uuid.uuid4().hex[:8]}")


async def seed_callbacks(db: asyncpg.Pool, app_id: uuid.UUID | None, *when: datetime) -> None:
    for t in when:
        await db.execute("INSERT INTO callbacks (app_id, caller, started_at) VALUES ($1, $2, $3)",
                         app_id, "+9779800000001", t)


async def expected_usage(db: asyncpg.Pool, app_id: uuid.UUID, first: date, last: date
                         ) -> list[dict[str, Any]]:
    """The day figures computed here, in Python, from the raw rows of the app."""
    sessions = await db.fetch(
        "SELECT id, transport_type, created_at FROM sessions WHERE app_id = $1", app_id)
    kind = {s["id"]: s["transport_type"] for s in sessions}
    created = {s["id"]: s["created_at"] for s in sessions}
    deliveries = await db.fetch(
        "SELECT id, session_id, status, final_at FROM deliveries"
        " WHERE session_id = ANY($1::uuid[])", list(kind))
    of = {d["id"]: d["session_id"] for d in deliveries}
    attempts = await db.fetch(
        "SELECT delivery_id, started_at, outcome, detail, provider_ref FROM attempts"
        " WHERE delivery_id = ANY($1::bigint[])", list(of))
    callbacks = await db.fetch("SELECT started_at FROM callbacks WHERE app_id = $1", app_id)
    days: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)

    def add(t: datetime | None, transport: str, figure: str, n: int = 1) -> None:
        if t is not None and first <= t.astimezone(UTC).date() <= last:
            days[(t.astimezone(UTC).date().isoformat(), transport)][figure] += n

    for s in sessions:
        add(s["created_at"], s["transport_type"], "sessions")
    for d in deliveries:
        t = kind[d["session_id"]]
        add(created[d["session_id"]], t, "recipients")
        if d["status"] in ("delivered", "failed"):
            add(d["final_at"], t, d["status"])
    for a in attempts:
        t = kind[of[a["delivery_id"]]]
        detail = a["detail"] or {}
        add(a["started_at"], t, "attempts")
        if t in ("sms", "whatsapp") and a["provider_ref"] and "segments" in detail:
            add(a["started_at"], t, "smsSegments", int(detail["segments"]))
        if a["outcome"] == "answered":
            add(a["started_at"], t, "callsAnswered")
            add(a["started_at"], t, "billableSeconds", math.ceil(detail["talkS"]))
    for cb in callbacks:
        add(cb["started_at"], "voice", "inboundCallbacks")
    return [{"date": d, "transport": t, **{f: days[(d, t)][f] for f in FIGURES}}
            for d, t in sorted(days) if any(days[(d, t)].values())]


async def register(api: Api, name: str, type_: str, config: dict[str, Any]) -> None:
    status, body = await api.post("/v1/transports", {"name": name, "type": type_,
                                                     "config": config})
    assert status == 201, body


async def run_mixed(api: Api, smtp_port: int, fake_twilio: FakeTwilio, twilio_transport: Any,
                    fake_slack: FakeSlack, sink: HttpSink, procs: Procs) -> dict[str, str]:
    await register(api, "smtp", "email", {"host": "127.0.0.1", "port": smtp_port,
                                          "from": "Hub <hub@example.com>"})
    await twilio_transport()
    await register(api, "slack", "slack", {"token": SLACK_TOKEN,
                                           "baseUrl": fake_slack.url + "/api"})
    await register(api, "gateway", "api", {"url": sink.url + "/send",
                                           "body": {"to": "{{address}}", "text": "{{message}}"},
                                           "idPath": "$.id"})
    fake_twilio.scripts["+14155550102"] = ["undelivered:30005"]
    fake_twilio.scripts["+14155550103"] = ["error:21211"]
    fake_slack.scripts["C0GONE"] = ["error:channel_not_found"]
    procs.worker()
    sids = {}
    for type_, audience, message in (
        ("email", ["ok1@example.com", "ok2@example.com", "bounce@example.com"], "Hello"),
        ("sms", ["+14155550101", "+14155550102", "+14155550103"], LONG_SMS),
        ("slack", ["C0OK", "C0GONE"], "Deploy finished"),
        ("api", ["+9779812345678", "+9779812345679"], "Camp on Friday"),
    ):
        instruction: dict[str, Any] = {"transport": {"type": type_, "message": message},
                                       "audience": audience}
        if type_ == "email":
            instruction["transport"]["subject"] = "Usage"
        sids[type_] = (await api.submit(instruction))["sessionId"]
    for sid in sids.values():
        await api.wait_status(sid, timeout_s=40)
    return sids


async def test_usage_equals_the_records_of_a_mixed_run_over_two_days(
    api: Api, db: asyncpg.Pool, make_app: Any, smtp_sink: tuple[int, SmtpSink],
    fake_twilio: FakeTwilio, twilio_transport: Any, fake_slack: FakeSlack, sink: HttpSink,
    procs: Procs, api_server: str,
) -> None:
    sids = await run_mixed(api, smtp_sink[0], fake_twilio, twilio_transport, fake_slack, sink,
                           procs)
    app_id = api.app.app_id
    # The real run moves to day 2 around noon; the email session to day 1.
    ids = [uuid.UUID(s) for s in sids.values()]
    start = await db.fetchval("SELECT min(created_at) FROM sessions WHERE id = ANY($1)", ids)
    await shift(db, ids, NOON2 - start)
    await shift(db, [uuid.UUID(sids["email"])], timedelta(days=-1))
    # Voice, seeded: a session opened late on day 1 whose calls run over midnight.
    await seed_voice(db, app_id, at(DAY1, 23, 59, 40), at(DAY2, 1, 5), [
        ("+9779800000001", "delivered", at(DAY2, 0, 0, 8.5),
         [(at(DAY1, 23, 59, 50), "answered", 12.3)]),            # 13 s on day 1
        ("+9779800000002", "delivered", at(DAY2, 1, 0, 9),
         [(at(DAY1, 23, 59, 52), "no_answer", None),
          (at(DAY2, 1, 0, 2), "answered", 0.4)]),                 # 1 s on day 2
        ("+9779800000003", "failed", at(DAY2, 1, 1),
         [(at(DAY2, 1, 0, 30), "busy", None)]),
    ])
    await seed_callbacks(db, app_id, at(DAY1, 18), at(DAY2, 9), at(DAY2, 23, 59, 59))
    await seed_callbacks(db, app_id, at(DAY2 + timedelta(days=1), 0))   # the day after
    await seed_callbacks(db, None, at(DAY2, 10))                       # an unknown caller
    # Another app with rows on the same days: none of them may count.
    other: NewApp = await make_app("other")
    await seed_voice(db, other.app_id, at(DAY1, 10), at(DAY2, 11), [
        ("+9779800000009", "delivered", at(DAY2, 10, 5),
         [(at(DAY2, 10), "answered", 100.0)])])
    await seed_callbacks(db, other.app_id, at(DAY2, 9), at(DAY1, 9))

    status, body = await api.get(f"/v1/usage?from={DAY1}&to={DAY2}")
    assert status == 200, body
    assert body["from"] == str(DAY1) and body["to"] == str(DAY2)
    items = body["items"]
    assert items == await expected_usage(db, app_id, DAY1, DAY2)
    got = {(i["date"], i["transport"]): i for i in items}
    # Anchors known from what was sent, independent of any computation.
    assert {k: got[(str(DAY1), "email")][k] for k in ("sessions", "recipients", "attempts",
                                                      "delivered", "failed")} == {
        "sessions": 1, "recipients": 3, "attempts": 3, "delivered": 2, "failed": 1}
    sms = got[(str(DAY2), "sms")]
    assert (sms["attempts"], sms["delivered"], sms["failed"], sms["smsSegments"]) == (3, 1, 2, 4)
    assert (got[(str(DAY2), "slack")]["delivered"], got[(str(DAY2), "slack")]["failed"]) == (1, 1)
    assert (got[(str(DAY2), "api")]["delivered"], got[(str(DAY2), "api")]["attempts"]) == (2, 2)
    v1, v2 = got[(str(DAY1), "voice")], got[(str(DAY2), "voice")]
    assert {k: v1[k] for k in FIGURES} == {
        "sessions": 1, "recipients": 3, "attempts": 2, "delivered": 0, "failed": 0,
        "smsSegments": 0, "callsAnswered": 1, "billableSeconds": 13, "inboundCallbacks": 1}
    assert {k: v2[k] for k in FIGURES} == {
        "sessions": 0, "recipients": 0, "attempts": 2, "delivered": 2, "failed": 1,
        "smsSegments": 0, "callsAnswered": 1, "billableSeconds": 1, "inboundCallbacks": 2}
    assert [(i["date"], i["transport"]) for i in items] == sorted(got)  # date, then transport

    # One day only: the other day's rows are left out.
    status, body = await api.get(f"/v1/usage?from={DAY2}&to={DAY2}")
    assert status == 200 and body["items"] == await expected_usage(db, app_id, DAY2, DAY2)
    assert {i["date"] for i in body["items"]} == {str(DAY2)}
    # The other app sees only its own figures.
    status, body = await api.get(f"/v1/usage?from={DAY1}&to={DAY2}", key=other.api_key)
    assert status == 200 and body["items"] == await expected_usage(db, other.app_id, DAY1, DAY2)
    assert [(i["date"], i["callsAnswered"], i["billableSeconds"], i["inboundCallbacks"])
            for i in body["items"]] == [(str(DAY1), 0, 0, 1), (str(DAY2), 1, 100, 1)]

    # The CLI: --json is the API's answer; the table has a line per row and the totals.
    env = {"HUB_API_URL": api_server, "HUB_API_KEY": api.key}
    out = hub("usage", "--from", str(DAY1), "--to", str(DAY2), "--json", **env)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["items"] == items
    out = hub("usage", "--from", str(DAY1), "--to", str(DAY2), **env)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[1].split() == ["date", "transport", "sessions", "recipients", "attempts",
                                "delivered", "failed", "segments", "answered", "billable_s",
                                "callbacks"]
    assert lines[2:2 + len(items)] and all(
        line.split()[:2] == [i["date"], i["transport"]] for line, i in zip(lines[2:], items,
                                                                            strict=False))
    assert lines[-1].split() == ["total", *[str(sum(i[f] for i in items)) for f in FIGURES]]
    v1_line = next(line for line in lines if line.startswith(f"{DAY1}  voice"))
    assert v1_line.split()[2:] == ["1", "3", "2", "0", "0", "0", "1", "13", "1"]


@pytest.mark.parametrize(("query", "field"), [
    ("from=2026-13-01&to=2026-12-31", "from"),
    ("from=yesterday", "from"),
    ("from=2026-03-01&to=2026-3-5", "to"),
    ("from=2026-03-02&to=2026-03-01", "from"),
    ("from=2025-03-01&to=2026-03-02", "to"),    # 367 days, both ends included
])
async def test_usage_refuses_bad_ranges(api: Api, query: str, field: str) -> None:
    status, body = await api.get(f"/v1/usage?{query}")
    assert status == 422, body
    assert body["details"][0]["loc"] == ["query", field], body


async def test_usage_defaults_and_longest_range(api: Api) -> None:
    status, body = await api.get("/v1/usage")
    today = datetime.now(UTC).date()
    assert status == 200 and body == {"from": str(today - timedelta(days=29)),
                                      "to": str(today), "items": []}
    status, body = await api.get("/v1/usage?from=2025-03-02&to=2026-03-02")  # 366 days
    assert status == 200, body
    status, body = await api.get("/v1/usage?to=2026-03-02")
    assert status == 200 and body["from"] == "2026-02-01"


async def test_cli_usage_errors_are_one_line(api: Api, api_server: str) -> None:
    env = {"HUB_API_URL": api_server, "HUB_API_KEY": api.key}
    out = hub("usage", "--from", "2026-03-05", "--to", "2026-03-01", **env)
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.count("\n") == 1 and "HTTP 422" in out.stderr and "query.from" in out.stderr
    out = hub("usage", "--from", "soon", **env)
    assert out.returncode == 1 and "query.from" in out.stderr and "Traceback" not in out.stderr
    out = hub("usage", HUB_API_URL=api_server)
    assert out.returncode != 0 and "API key is needed" in out.stderr
    out = hub("usage", "--json", HUB_API_URL="http://127.0.0.1:9", HUB_API_KEY=api.key)
    assert out.returncode == 4 and out.stderr.startswith("hub: ") and "Traceback" not in out.stderr
    out = hub("usage", "--to", "2020-01-01", **env)
    assert out.returncode == 0 and "(no usage in this range)" in out.stdout
