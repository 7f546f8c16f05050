"""End to end: `hub api` and `hub worker` processes, a real SMTP server, a webhook receiver."""

from __future__ import annotations

import json
from typing import Any

import pytest
from redis import Redis
from standardwebhooks.webhooks import Webhook

from hub.dev.smtp import SmtpSink
from tests.conftest import Procs
from tests.helpers import Api, WebhookReceiver, eventually

pytestmark = pytest.mark.e2e


def email(audience: list[str], **options: Any) -> dict[str, Any]:
    return {"transport": {"type": "email", "subject": "Hello", "message": "Body text"},
            "audience": audience, "options": options}


async def test_immediate_session_delivers_and_signs_webhooks(
    api: Api, email_transport: dict[str, Any], smtp_sink: tuple[int, SmtpSink],
    procs: Procs, receiver: WebhookReceiver,
) -> None:
    _, sink = smtp_sink
    procs.worker()
    created = await api.submit(email(["a@example.com", "b@example.com", "A@Example.com",
                                      "bounce@example.com"], webhookUrl=receiver.url))
    assert created["status"] == "queued"
    assert created["audienceCount"] == 3 and created["duplicatesRemoved"] == 1
    done = await api.wait_status(created["sessionId"])
    assert done["counts"] == {"delivered": 2, "failed": 1}
    assert done["startedAt"] and done["endedAt"]
    got = {r.rcpt: r for r in sink.received}
    assert set(got) == {"a@example.com", "b@example.com"}
    assert got["a@example.com"].subject == "Hello"
    rows = await api.deliveries(created["sessionId"])
    assert rows["a@example.com"]["providerRef"] == got["a@example.com"].message_id
    assert rows["bounce@example.com"]["error"].startswith("SMTP 550")
    assert rows["bounce@example.com"]["attempts"] == 1

    await eventually(lambda: _async(len(receiver.events()) >= 4), 15, "4 webhook events")
    verifier = Webhook(api.app.webhook_secret)
    for headers, body, _ in receiver.requests:
        lowered = {k.lower(): v for k, v in headers.items()}
        verifier.verify(body, lowered)  # raises if the signature does not verify
    by_addr = {e["data"]["address"]: e["data"] for e in receiver.events("delivery.completed")}
    assert by_addr["bounce@example.com"]["status"] == "failed"
    assert by_addr["a@example.com"] | {} == by_addr["a@example.com"]
    assert by_addr["a@example.com"]["status"] == "delivered"
    summary = receiver.events("session.completed")[0]["data"]
    assert summary["counts"] == {"delivered": 2, "failed": 1}
    assert summary["reportUrl"].endswith(f"/v1/sessions/{created['sessionId']}/report")


async def _async(value: Any) -> Any:
    return value


async def test_a_worker_keeps_its_smtp_connection_between_small_sessions(
    api: Api, email_transport: dict[str, Any], smtp_sink: tuple[int, SmtpSink], procs: Procs,
) -> None:
    """One notification after another through one `hub worker`: one SMTP connection for
    all of them (a job opened and QUIT one per session), every message delivered once."""
    _, sink = smtp_sink
    procs.worker()
    for i in range(4):
        created = await api.submit(email([f"n{i}@example.com"]))
        done = await api.wait_status(created["sessionId"])
        assert done["counts"] == {"delivered": 1}
    assert [r.rcpt for r in sink.received] == [f"n{i}@example.com" for i in range(4)]
    assert sink.connections() == 1 and sink.quits == 0


async def test_smtp_4xx_retried_on_schedule_then_delivered(
    api: Api, email_transport: dict[str, Any], smtp_sink: tuple[int, SmtpSink], procs: Procs,
) -> None:
    _, sink = smtp_sink
    sink.scripts["late@example.com"] = ["451 4.3.0 try later", "451 4.3.0 try later"]
    procs.worker()
    created = await api.submit(email(["late@example.com"], retries=3,
                                     retryIntervalMinutes="0.05,0.1"))
    await api.wait_status(created["sessionId"], timeout_s=40)
    row = (await api.deliveries(created["sessionId"]))["late@example.com"]
    assert row["status"] == "delivered" and row["attempts"] == 3
    status, attempts = await api.get(
        f"/v1/sessions/{created['sessionId']}/deliveries/late@example.com/attempts")
    assert [a["outcome"] for a in attempts["items"]] == [
        "temporary_failure", "temporary_failure", "delivered"]
    refused = sink.refused["late@example.com"]
    accepted = sink.for_address("late@example.com")[0].at
    gap1, gap2 = refused[1] - refused[0], accepted - refused[1]
    assert 3.0 <= gap1 < 3.0 + 4, gap1   # 0.05 min = 3 s, plus scheduler latency
    assert 6.0 <= gap2 < 6.0 + 4, gap2   # 0.1 min = 6 s


async def test_email_retries_move_while_a_webhooks_only_worker_holds_a_scheduler_lock(
    api: Api, email_transport: dict[str, Any], smtp_sink: tuple[int, SmtpSink], procs: Procs,
    redis: Redis,
) -> None:
    _, sink = smtp_sink
    sink.scripts["late@example.com"] = ["451 4.3.0 try later"]
    procs.start("worker", "--queues", "webhooks")  # first: it takes the scheduler lock it can

    async def locked() -> bool:
        return bool(redis.keys("hub:lock:scheduler*"))
    await eventually(locked, 15, "the webhooks worker to hold a scheduler lock")
    procs.start("worker", "--queues", "email")
    created = await api.submit(email(["late@example.com"], retries=1,
                                     retryIntervalMinutes="0.05"))
    done = await api.wait_status(created["sessionId"], timeout_s=30)
    assert done["counts"] == {"delivered": 1}
    [refused] = sink.refused["late@example.com"]
    accepted = sink.for_address("late@example.com")[0].at
    # 0.05 min = 3 s, plus scheduler latency; not left to the reconciler's 10 s grace
    assert 3.0 <= accepted - refused < 3.0 + 4, accepted - refused


async def test_smtp_5xx_is_not_retried(
    api: Api, email_transport: dict[str, Any], smtp_sink: tuple[int, SmtpSink], procs: Procs,
) -> None:
    _, sink = smtp_sink
    sink.scripts["gone@example.com"] = ["550 5.1.1 mailbox unavailable"]
    procs.worker()
    created = await api.submit(email(["gone@example.com"], retries=3, retryIntervalMinutes="0.01"))
    await api.wait_status(created["sessionId"])
    row = (await api.deliveries(created["sessionId"]))["gone@example.com"]
    assert row["status"] == "failed" and row["attempts"] == 1
    assert row["detail"] == {"smtpCode": 550, "smtpReply": "5.1.1 mailbox unavailable"}
    assert len(sink.refused["gone@example.com"]) == 1


async def test_scheduled_session_waits_for_its_time(
    api: Api, email_transport: dict[str, Any], smtp_sink: tuple[int, SmtpSink], procs: Procs,
) -> None:
    import datetime as dt

    _, sink = smtp_sink
    procs.worker()
    at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=4)
    created = await api.submit(email(["later@example.com"], trigger="scheduled",
                                     scheduledTimestamp=at.replace(tzinfo=None).isoformat()))
    assert created["status"] == "scheduled"
    assert dt.datetime.fromisoformat(created["scheduledTimestamp"]) == at.replace(microsecond=at.microsecond)
    await api.wait_status(created["sessionId"], timeout_s=30)
    received = sink.for_address("later@example.com")
    assert len(received) == 1 and received[0].at >= at.timestamp() - 0.05


async def test_manual_session_waits_for_trigger(
    api: Api, email_transport: dict[str, Any], smtp_sink: tuple[int, SmtpSink], procs: Procs,
) -> None:
    import asyncio

    _, sink = smtp_sink
    procs.worker()
    created = await api.submit(email(["m@example.com"], trigger="manual"))
    assert created["status"] == "awaiting_trigger"
    await asyncio.sleep(2.5)
    assert sink.received == []
    status, body = await api.post(f"/v1/sessions/{created['sessionId']}/trigger")
    assert status == 202 and body["status"] == "queued"
    await api.wait_status(created["sessionId"])
    assert len(sink.for_address("m@example.com")) == 1
    status, body = await api.post(f"/v1/sessions/{created['sessionId']}/trigger")
    assert status == 409 and body["error_id"] == "cannot-trigger"


async def test_include_failed_reruns_failed_recipients(
    api: Api, email_transport: dict[str, Any], smtp_sink: tuple[int, SmtpSink], procs: Procs,
) -> None:
    _, sink = smtp_sink
    sink.scripts["flaky@example.com"] = ["554 5.7.1 rejected for now"]
    procs.worker()
    created = await api.submit(email(["ok@example.com", "flaky@example.com"]))
    sid = created["sessionId"]
    done = await api.wait_status(sid)
    assert done["counts"] == {"delivered": 1, "failed": 1}
    status, body = await api.post(f"/v1/sessions/{sid}/trigger?includeFailed=true")
    assert status == 202 and body["run"] == 2
    done = await api.wait_status(sid)
    assert done["counts"] == {"delivered": 2}
    assert len(sink.for_address("ok@example.com")) == 1  # delivered ones are not resent
    assert (await api.deliveries(sid))["flaky@example.com"]["attempts"] == 2


async def test_idempotent_resubmission(
    api: Api, email_transport: dict[str, Any], smtp_sink: tuple[int, SmtpSink], db: Any,
) -> None:
    body = email(["idem@example.com"])
    headers = {"Idempotency-Key": "order-42"}
    s1, first = await api.post("/v1/sessions", body, headers=headers)
    s2, again = await api.post("/v1/sessions", body, headers=headers)
    assert (s1, s2) == (201, 201)
    assert again == first and api.last_headers.get("Idempotency-Replay") == "true"
    s3, other = await api.post("/v1/sessions", email(["x@example.com"]), headers=headers)
    assert s3 == 422 and other["error_id"] == "idempotency-key-reused"
    assert await db.fetchval("SELECT count(*) FROM sessions") == 1
    bad = email(["not-an-address"])
    s4, err = await api.post("/v1/sessions", bad, headers={"Idempotency-Key": "bad-1"})
    s5, err2 = await api.post("/v1/sessions", bad, headers={"Idempotency-Key": "bad-1"})
    assert (s4, s5) == (422, 422) and err == err2


async def test_cancel_mid_session_stops_new_attempts(
    api: Api, email_transport: dict[str, Any], smtp_sink: tuple[int, SmtpSink], procs: Procs,
    receiver: WebhookReceiver,
) -> None:
    _, sink = smtp_sink
    audience = [f"c{i}@example.com" for i in range(300)]
    for a in audience:
        sink.scripts[a] = ["451 4.3.0 slow down"]  # every first try fails: retries pending
    procs.worker()
    created = await api.submit(email(audience, retries=2, retryIntervalMinutes="0.2",
                                     webhookUrl=receiver.url))
    sid = created["sessionId"]
    await eventually(lambda: _async(len(sink.refused) >= 300), 30, "first attempts")
    status, body = await api.post(f"/v1/sessions/{sid}/cancel")
    assert status == 202 and body["status"] == "cancelled"
    await api.wait_status(sid, ("cancelled",))

    async def ended() -> bool:  # in-flight attempts finish, then the session closes
        return bool((await api.session(sid))["endedAt"])
    await eventually(ended, 20, "the cancelled session to end")
    assert sink.received == []
    rows = await api.deliveries(sid)
    assert {r["status"] for r in rows.values()} == {"cancelled"}
    summary = await eventually(lambda: _async(receiver.events("session.completed")), 15,
                               "session.completed")
    assert summary[0]["data"]["status"] == "cancelled"
    status, body = await api.post(f"/v1/sessions/{sid}/cancel")
    assert status == 409


async def test_pause_and_resume(
    api: Api, email_transport: dict[str, Any], smtp_sink: tuple[int, SmtpSink], procs: Procs,
) -> None:
    import asyncio

    _, sink = smtp_sink
    created = await api.submit(email(["p@example.com"], trigger="manual"))
    sid = created["sessionId"]
    await api.post(f"/v1/sessions/{sid}/trigger")
    status, body = await api.post(f"/v1/sessions/{sid}/pause")
    assert status == 202 and body["status"] == "paused"
    procs.worker()
    await asyncio.sleep(2.5)
    assert sink.received == []
    status, body = await api.post(f"/v1/sessions/{sid}/resume")
    assert status == 202 and body["status"] == "queued"
    await api.wait_status(sid)
    assert len(sink.for_address("p@example.com")) == 1


async def test_suppressed_address_is_never_sent(
    api: Api, email_transport: dict[str, Any], smtp_sink: tuple[int, SmtpSink], procs: Procs,
) -> None:
    _, sink = smtp_sink
    status, body = await api.post("/v1/suppressions", {"addresses": ["Stop@Example.com"]})
    assert status == 201
    procs.worker()
    created = await api.submit(email(["stop@example.com", "go@example.com"], retries=2))
    await api.wait_status(created["sessionId"])
    rows = await api.deliveries(created["sessionId"])
    assert rows["stop@example.com"]["status"] == "failed"
    assert rows["stop@example.com"]["outcome"] == "suppressed"
    assert [r.rcpt for r in sink.received] == ["go@example.com"]


async def test_webhook_receiver_down_is_retried_with_same_id(
    api: Api, email_transport: dict[str, Any], smtp_sink: tuple[int, SmtpSink], procs: Procs,
    receiver: WebhookReceiver, db: Any,
) -> None:
    receiver.fail_next = 4  # two events (delivery, session), each refused twice
    procs.worker()
    created = await api.submit(email(["w@example.com"], webhookUrl=receiver.url))
    await api.wait_status(created["sessionId"])
    await eventually(lambda: _async(
        len([r for r in receiver.requests if json.loads(r[1])["type"] == "session.completed"]) >= 1
        and len(receiver.requests) >= 6), 30, "webhooks retried")
    ids: dict[str, list[float]] = {}
    for headers, _, at in receiver.requests:
        ids.setdefault(headers["webhook-id"], []).append(at)
    assert len(ids) == 2 and all(len(times) == 3 for times in ids.values())  # 500, 500, 204
    for times in ids.values():  # schedule "0,1,2,3" s in the tests: 1 s, then 2 s
        assert times[1] - times[0] >= 0.9 and times[2] - times[1] >= 1.9
    async def all_logged() -> list[Any] | None:  # the receiver answers before the row commits
        rows = await db.fetch("SELECT status_code FROM webhook_attempts ORDER BY id")
        return list(rows) if len(rows) >= 6 else None
    logged = await eventually(all_logged, 10, "six webhook attempts logged")
    assert sorted(r["status_code"] for r in logged) == [204, 204, 500, 500, 500, 500]


async def test_html_cc_reply_to_and_attachment_by_url(
    api: Api, email_transport: dict[str, Any], smtp_sink: tuple[int, SmtpSink], procs: Procs,
) -> None:
    from aiohttp import web

    from tests.helpers import local_server

    async def pdf(request: web.Request) -> web.Response:
        return web.Response(body=b"%PDF-1.4 agenda", content_type="application/pdf")

    app = web.Application()
    app.router.add_get("/agenda.pdf", pdf)
    runner, base = await local_server(app)
    try:
        _, sink = smtp_sink
        procs.worker()
        body = email(["rich@example.com"])
        body["transport"]["extras"] = {
            "html": "<p>Hello <b>there</b></p>", "cc": ["boss@example.com"],
            "replyTo": "office@example.com",
            "attachments": [{"url": f"{base}/agenda.pdf"}]}
        created = await api.submit(body)
        await api.wait_status(created["sessionId"])
    finally:
        await runner.cleanup()
    got = {r.rcpt: r for r in sink.received}
    # the cc address gets the session's one copy, addressed to it; the audience's
    # messages name only their recipient
    assert set(got) == {"rich@example.com", "boss@example.com"}
    assert len(sink.received) == 2
    msg = got["rich@example.com"].message
    assert msg["To"] == "rich@example.com" and msg["Cc"] is None
    copy = got["boss@example.com"].message
    assert copy["To"] == "boss@example.com" and copy["X-Hub-Copy"] == "cc"
    assert (await api.session(created["sessionId"]))["counts"] == {"delivered": 2}
    for received in (msg, copy):
        assert received["Reply-To"] == "office@example.com"
        parts = {p.get_content_type(): p for p in received.walk()}
        assert "<b>there</b>" in parts["text/html"].get_payload(decode=True).decode()
        assert parts["text/plain"].get_payload(decode=True).decode().strip() == "Body text"
        attachment = parts["application/pdf"]
        assert attachment.get_filename() == "agenda.pdf"
        assert attachment.get_payload(decode=True) == b"%PDF-1.4 agenda"


async def test_smtp_auth_from_the_transport_config(api: Api, procs: Procs) -> None:
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult

    from hub.dev.smtp import SmtpSink, free_port

    logins: list[tuple[str, str]] = []

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str,
                      auth_data: Any) -> AuthResult:
        logins.append((auth_data.login.decode(), auth_data.password.decode()))
        return AuthResult(success=auth_data.password == b"s3cret-pw")

    sink = SmtpSink()
    port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port, authenticator=authenticator,
                            auth_require_tls=False)
    controller.start()
    try:
        status, body = await api.post("/v1/transports", {"name": "auth", "type": "email",
            "config": {"host": "127.0.0.1", "port": port, "from": "a@example.com",
                       "username": "hub", "password": "s3cret-pw"}})
        assert status == 201, body
        procs.worker()
        created = await api.submit(email(["auth@example.com"]))
        done = await api.wait_status(created["sessionId"])
    finally:
        controller.stop()
    assert done["counts"] == {"delivered": 1}
    assert logins == [("hub", "s3cret-pw")]  # the write-only password reached the server
    assert [r.rcpt for r in sink.received] == ["auth@example.com"]
