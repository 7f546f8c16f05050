"""SMS and WhatsApp through the real `twilio` library against a local fake of Twilio's
Messages API, with signed status callbacks coming back to the running API."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

import pytest
from twilio.request_validator import RequestValidator

from hub.dev.fake_twilio import FakeTwilio
from tests.conftest import TWILIO_TOKEN, Procs
from tests.helpers import Api

pytestmark = pytest.mark.e2e


def sms(audience: list[str], message: str = "Namaste from the hub", type_: str = "sms",
        extras: dict[str, Any] | None = None, **options: Any) -> dict[str, Any]:
    transport: dict[str, Any] = {"type": type_, "message": message}
    if extras:
        transport["extras"] = extras
    return {"transport": transport, "audience": audience, "options": options}


async def test_sms_sent_and_confirmed_by_status_callback(
    api: Api, twilio_transport: Any, fake_twilio: FakeTwilio, procs: Procs,
) -> None:
    transport = await twilio_transport()
    fake_twilio.scripts["+14155550102"] = ["undelivered:30005"]
    procs.worker()
    created = await api.submit(sms(["+1 415 555 0101", "+14155550102", "+14155550101"]))
    assert created["duplicatesRemoved"] == 1
    done = await api.wait_status(created["sessionId"])
    assert done["counts"] == {"delivered": 1, "failed": 1}
    rows = await api.deliveries(created["sessionId"])
    ok, bad = rows["+14155550101"], rows["+14155550102"]
    [sent] = fake_twilio.by_number("+14155550101")
    assert ok["providerRef"] == sent.sid and ok["outcome"] == "delivered"
    assert sent.params["Body"] == "Namaste from the hub" and sent.params["From"] == "+14155550100"
    assert sent.params["StatusCallback"].endswith(f"/v1/callbacks/twilio/{transport['id']}")
    assert ok["detail"]["encoding"] == "GSM-7" and ok["detail"]["segments"] == 1
    assert (bad["outcome"], bad["attempts"], bad["detail"]["errorCode"]) == ("undelivered", 1, 30005)


async def test_invalid_number_not_retried_transient_errors_retried(
    api: Api, twilio_transport: Any, fake_twilio: FakeTwilio, procs: Procs,
) -> None:
    await twilio_transport()
    fake_twilio.scripts["+14155550103"] = ["error:21211"]
    fake_twilio.scripts["+14155550104"] = ["error:429", "error:500"]
    procs.worker()
    created = await api.submit(sms(["+14155550103", "+14155550104"], retries=3,
                                   retryIntervalMinutes="0.02"))
    await api.wait_status(created["sessionId"], timeout_s=40)
    rows = await api.deliveries(created["sessionId"])
    assert (rows["+14155550103"]["status"], rows["+14155550103"]["attempts"]) == ("failed", 1)
    assert rows["+14155550103"]["error"].startswith("Twilio 21211")
    assert (rows["+14155550104"]["status"], rows["+14155550104"]["attempts"]) == ("delivered", 3)
    status, body = await api.get(
        f"/v1/sessions/{created['sessionId']}/deliveries/%2B14155550104/attempts")
    tries = body["items"]
    assert [a["outcome"] for a in tries] == ["temporary_failure", "temporary_failure", "delivered"]
    from datetime import datetime

    for before, after in zip(tries, tries[1:], strict=False):  # 0.02 min = 1.2 s apart
        gap = (datetime.fromisoformat(after["startedAt"])
               - datetime.fromisoformat(before["endedAt"])).total_seconds()
        assert 1.2 <= gap <= 4.0, gap


async def test_unicode_message_counts_ucs2_segments(
    api: Api, twilio_transport: Any, fake_twilio: FakeTwilio, procs: Procs,
) -> None:
    await twilio_transport()
    procs.worker()
    text = "नमस्ते! " * 12  # 96 characters outside GSM-7: two UCS-2 segments
    created = await api.submit(sms(["+14155550105"], message=text))
    await api.wait_status(created["sessionId"])
    row = (await api.deliveries(created["sessionId"]))["+14155550105"]
    assert (row["detail"]["encoding"], row["detail"]["segments"]) == ("UCS-2", 2)
    assert fake_twilio.by_number("+14155550105")[0].params["Body"] == text


async def test_whatsapp_template_variables_and_media_reach_twilio(
    api: Api, twilio_transport: Any, fake_twilio: FakeTwilio, procs: Procs,
) -> None:
    await twilio_transport("whatsapp", name="wa")
    procs.worker()
    extras = {"contentSid": "HX" + "a" * 32, "contentVariables": {"1": "Asha", "2": "Friday"},
              "mediaUrl": "https://example.com/poster.jpg"}
    created = await api.submit({"transport": {"type": "whatsapp", "extras": extras},
                                "audience": ["whatsapp:+14155550106"]})
    done = await api.wait_status(created["sessionId"])
    assert done["counts"] == {"delivered": 1}
    [sent] = fake_twilio.by_number("+14155550106")
    assert sent.params["To"] == "whatsapp:+14155550106"
    assert sent.params["From"] == "whatsapp:+14155550100"
    assert sent.params["ContentSid"] == extras["contentSid"]
    assert json.loads(sent.params["ContentVariables"]) == {"1": "Asha", "2": "Friday"}
    assert sent.params["MediaUrl"] == "https://example.com/poster.jpg"


async def test_forged_and_unsigned_callbacks_are_rejected(
    api: Api, twilio_transport: Any, fake_twilio: FakeTwilio, procs: Procs,
) -> None:
    transport = await twilio_transport()
    fake_twilio.scripts["+14155550107"] = ["silent"]  # accepted; no callback of its own
    procs.worker()
    created = await api.submit(sms(["+14155550107"]))
    sid = created["sessionId"]

    async def sent() -> bool:
        return (await api.deliveries(sid))["+14155550107"]["providerRef"] is not None
    from tests.helpers import eventually

    await eventually(sent, 20, "the message to be accepted")
    row = (await api.deliveries(sid))["+14155550107"]
    assert row["status"] == "in_progress"  # not final until the receipt says so
    path = f"/v1/callbacks/twilio/{transport['id']}"
    params = {"MessageSid": row["providerRef"], "MessageStatus": "delivered"}
    forged = RequestValidator("not-the-token").compute_signature(api.base + path, params)
    for headers in ({}, {"X-Twilio-Signature": forged}):
        async with api.http.post(api.base + path, data=urlencode(params), headers={
                "Content-Type": "application/x-www-form-urlencoded", **headers}) as resp:
            assert resp.status == 403
            assert (await resp.json())["error_id"] == "invalid-signature"
    assert (await api.deliveries(sid))["+14155550107"]["status"] == "in_progress"
    good = RequestValidator(TWILIO_TOKEN).compute_signature(api.base + path, params)
    async with api.http.post(api.base + path, data=urlencode(params), headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Twilio-Signature": good}) as resp:
        assert resp.status == 204
    done = await api.wait_status(sid)
    assert done["counts"] == {"delivered": 1}


async def test_receipt_timeout_finalises(
    api: Api, twilio_transport: Any, fake_twilio: FakeTwilio, procs: Procs,
) -> None:
    await twilio_transport(receiptTimeoutS=2)
    fake_twilio.scripts["+14155550108"] = ["silent"]
    procs.worker()
    created = await api.submit(sms(["+14155550108"]))
    done = await api.wait_status(created["sessionId"], timeout_s=30)
    assert done["counts"] == {"delivered": 1}
    row = (await api.deliveries(created["sessionId"]))["+14155550108"]
    assert row["outcome"] == "sent" and row["detail"]["receipt"] == "none"


async def test_daily_cap_defers_and_resumes(
    api: Api, twilio_transport: Any, fake_twilio: FakeTwilio, procs: Procs, redis: Any,
) -> None:
    transport = await twilio_transport(dailyCap=2)
    procs.worker()
    audience = [f"+1415555011{i}" for i in range(4)]
    created = await api.submit(sms(audience))
    sid = created["sessionId"]

    async def capped() -> bool:
        counts = (await api.session(sid))["counts"]
        return counts.get("delivered") == 2 and counts.get("retry_scheduled") == 2
    from tests.helpers import eventually

    await eventually(capped, 30, "two sent, two deferred")
    rows = await api.deliveries(sid)
    waiting = [r for r in rows.values() if r["status"] == "retry_scheduled"]
    assert all("daily cap of 2 reached" in r["error"] and r["attempts"] == 0 for r in waiting)
    assert len(fake_twilio.messages) == 2
    # A new day: the counter resets (simulated by moving the deferred work to now).
    for key in redis.scan_iter(f"hub:cap:{transport['id']}:*"):
        redis.delete(key)
    await api_db_due_now(api, sid)
    done = await api.wait_status(sid, timeout_s=40)
    assert done["counts"] == {"delivered": 4} and len(fake_twilio.messages) == 4


async def api_db_due_now(api: Api, sid: str) -> None:
    import asyncpg

    from tests.conftest import DB_URL

    conn = await asyncpg.connect(DB_URL)
    await conn.execute("UPDATE deliveries SET next_attempt_at = now() - interval '1 minute'"
                       " WHERE session_id = $1 AND status = 'retry_scheduled'", __import__(
                           "uuid").UUID(sid))
    await conn.close()


async def test_inbound_stop_suppresses_the_sender(
    api: Api, twilio_transport: Any, fake_twilio: FakeTwilio, procs: Procs,
) -> None:
    transport = await twilio_transport()
    path = f"/v1/callbacks/twilio/{transport['id']}/inbound"
    params = {"From": "+14155550120", "To": "+14155550100", "Body": " stop "}
    signature = RequestValidator(TWILIO_TOKEN).compute_signature(api.base + path, params)
    async with api.http.post(api.base + path, data=urlencode(params), headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Twilio-Signature": signature}) as resp:
        assert resp.status == 200
    procs.worker()
    created = await api.submit(sms(["+14155550120"]))
    await api.wait_status(created["sessionId"])
    row = (await api.deliveries(created["sessionId"]))["+14155550120"]
    assert row["outcome"] == "suppressed" and fake_twilio.by_number("+14155550120") == []
