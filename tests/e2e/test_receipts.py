"""Twilio status callbacks (receipts) against the running API and worker: a receipt is
matched by the transport whose signature was checked and the message id, and one that
arrives before the worker has recorded the message id is kept and applied, not dropped."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
from twilio.request_validator import RequestValidator

from hub.dev.fake_twilio import FakeTwilio
from tests.conftest import TWILIO_TOKEN, Procs
from tests.e2e.test_twilio import sms
from tests.helpers import Api, eventually, free_port

pytestmark = pytest.mark.e2e

OTHER_SID = "AC" + "fedcba9876543210" * 2
OTHER_TOKEN = "other-app-auth-token-9876543210"


async def test_early_undelivered_receipt_fails_the_delivery_at_once(
    api: Api, twilio_transport: Any, fake_twilio: FakeTwilio, procs: Procs,
) -> None:
    await twilio_transport()  # receiptTimeoutS: the default hour
    fake_twilio.scripts["+14155550201"] = ["early-undelivered:30003"]
    procs.worker()
    started = time.monotonic()
    created = await api.submit(sms(["+14155550201"]))
    done = await api.wait_status(created["sessionId"], timeout_s=15)
    assert time.monotonic() - started < 15
    assert done["counts"] == {"failed": 1}
    [sent] = fake_twilio.by_number("+14155550201")
    assert [c["MessageStatus"] for c in sent.callbacks] == ["undelivered"]
    row = (await api.deliveries(created["sessionId"]))["+14155550201"]
    assert (row["status"], row["outcome"], row["attempts"]) == ("failed", "undelivered", 1)
    assert row["providerRef"] == sent.sid
    assert row["detail"]["errorCode"] == 30003 and "30003" in row["error"]


async def test_early_undelivered_receipt_is_retried(
    api: Api, twilio_transport: Any, fake_twilio: FakeTwilio, procs: Procs,
) -> None:
    await twilio_transport()
    fake_twilio.scripts["+14155550202"] = ["early-undelivered:30003", "ok"]
    procs.worker()
    created = await api.submit(sms(["+14155550202"], retries=1, retryIntervalMinutes="0.02"))
    done = await api.wait_status(created["sessionId"], timeout_s=20)
    assert done["counts"] == {"delivered": 1}
    first, second = fake_twilio.by_number("+14155550202")
    status, body = await api.get(
        f"/v1/sessions/{created['sessionId']}/deliveries/%2B14155550202/attempts")
    assert status == 200
    assert [(a["outcome"], a["providerRef"]) for a in body["items"]] == [
        ("undelivered", first.sid), ("delivered", second.sid)]
    assert "30003" in body["items"][0]["error"]


@pytest.fixture
async def other_twilio() -> AsyncIterator[FakeTwilio]:
    """A second Twilio account (another app's), with its own auth token."""
    fake = FakeTwilio(OTHER_SID, OTHER_TOKEN)
    await fake.start(free_port())
    yield fake
    await fake.stop()


async def _signed_post(http: aiohttp.ClientSession, url: str, token: str,
                       params: dict[str, str]) -> int:
    signature = RequestValidator(token).compute_signature(url, params)
    async with http.post(url, data=urlencode(params), headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Twilio-Signature": signature}) as resp:
        return resp.status


async def _accepted(api: Api, sid: str, address: str) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        row = (await api.deliveries(sid))[address]
        return row if row["providerRef"] is not None else None
    return await eventually(check, 20, f"{address} to be accepted by the provider")


async def test_a_receipt_signed_by_another_app_changes_nothing(
    api: Api, twilio_transport: Any, fake_twilio: FakeTwilio, procs: Procs, make_app: Any,
    http: aiohttp.ClientSession, other_twilio: FakeTwilio,
) -> None:
    ours = await twilio_transport()
    fake_twilio.scripts["+14155550203"] = ["silent"]  # accepted; waits for its receipt
    other = Api(http, api.base, await make_app("mallory"))
    status, theirs = await other.post("/v1/transports", {"name": "twilio", "type": "sms",
                                                         "config": {
        "accountSid": OTHER_SID, "authToken": OTHER_TOKEN, "from": "+14155550300",
        "baseUrl": other_twilio.url}})
    assert status == 201, theirs
    other_twilio.scripts["+14155550204"] = ["silent"]
    procs.worker()
    mine = await api.submit(sms(["+14155550203"]))
    their_session = await other.submit(sms(["+14155550204"]))
    victim = await _accepted(api, mine["sessionId"], "+14155550203")
    bystander = await _accepted(other, their_session["sessionId"], "+14155550204")

    # The other app signs, with its own transport's token, a receipt for our message.
    forged = {"MessageSid": victim["providerRef"], "AccountSid": OTHER_SID,
              "MessageStatus": "undelivered", "ErrorCode": "30003"}
    url = f"{api.base}/v1/callbacks/twilio/{theirs['id']}"
    assert await _signed_post(http, url, OTHER_TOKEN, forged) == 204
    # Its own SID under our transport's URL cannot be signed without our token.
    ours_url = f"{api.base}/v1/callbacks/twilio/{ours['id']}"
    mixed = {**forged, "MessageSid": bystander["providerRef"]}
    assert await _signed_post(http, ours_url, OTHER_TOKEN, mixed) == 403

    assert (await api.deliveries(mine["sessionId"]))["+14155550203"] == victim
    assert (await other.deliveries(their_session["sessionId"]))["+14155550204"] == bystander
    assert (await api.session(mine["sessionId"]))["status"] == "running"
    assert (await other.session(their_session["sessionId"]))["status"] == "running"

    # A receipt under our URL and token that names another account is not ours either.
    elsewhere = {**forged, "MessageStatus": "delivered"}
    del elsewhere["ErrorCode"]
    assert await _signed_post(http, ours_url, TWILIO_TOKEN, elsewhere) == 204
    assert (await api.deliveries(mine["sessionId"]))["+14155550203"] == victim

    # Our own signed receipt still settles our delivery.
    genuine = {**forged, "AccountSid": fake_twilio.account_sid, "MessageStatus": "delivered"}
    del genuine["ErrorCode"]
    assert await _signed_post(http, ours_url, TWILIO_TOKEN, genuine) == 204
    done = await api.wait_status(mine["sessionId"])
    assert done["counts"] == {"delivered": 1}
    assert (await other.deliveries(their_session["sessionId"]))["+14155550204"] == bystander
