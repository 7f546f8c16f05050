"""Retry policy, webhook signatures, the private-address guard."""

from __future__ import annotations

import pytest
from standardwebhooks.webhooks import Webhook

from hub import webhooks
from hub.net import BlockedURL, address_allowed, check_url
from hub.retry import decide, interval_s, when_cancelled
from hub.transports.base import Result

TEMP = Result("temporary_failure", retryable=True)
PERM = Result("permanent_failure")
OK = Result("delivered", delivered=True)


def test_retry_schedule_repeats_last_interval() -> None:
    assert [interval_s([60.0, 120.0], n) for n in (1, 2, 3, 4)] == [60.0, 120.0, 120.0, 120.0]


def test_retries_count_extra_attempts() -> None:
    iv = [10.0, 20.0]
    assert decide(TEMP, tries=1, retries=2, intervals_s=iv).delay_s == 10.0
    assert decide(TEMP, tries=2, retries=2, intervals_s=iv).delay_s == 20.0
    assert decide(TEMP, tries=3, retries=2, intervals_s=iv).status == "failed"
    assert decide(TEMP, tries=1, retries=0, intervals_s=iv).status == "failed"
    assert decide(PERM, tries=1, retries=5, intervals_s=iv).status == "failed"
    assert decide(OK, tries=1, retries=0, intervals_s=iv).status == "delivered"
    assert when_cancelled(decide(TEMP, tries=1, retries=2, intervals_s=iv)).status == "cancelled"
    assert when_cancelled(decide(OK, tries=1, retries=2, intervals_s=iv)).status == "delivered"


def test_signature_verifies_with_standardwebhooks() -> None:
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"type":"delivery.completed"}'
    import time

    ts = int(time.time())
    headers = webhooks.headers(secret, "msg_1", ts, body)
    Webhook(secret).verify(body, headers)
    headers["webhook-signature"] = webhooks.sign(secret, "msg_1", ts, body + b" ")
    with pytest.raises(Exception, match="signature"):
        Webhook(secret).verify(body, headers)


@pytest.mark.parametrize("host", ["127.0.0.1", "10.0.0.1", "192.168.1.1", "169.254.169.254",
                                  "::1", "fe80::1", "::ffff:127.0.0.1", "0.0.0.0", "224.0.0.1"])
def test_private_addresses_blocked(host: str) -> None:
    assert not address_allowed(host, allow_private=False)
    assert address_allowed(host, allow_private=True)


def test_public_addresses_allowed() -> None:
    assert address_allowed("93.184.216.34", allow_private=False)


def test_ip_literals_checked_before_connecting() -> None:
    from yarl import URL

    with pytest.raises(BlockedURL):
        check_url(URL("http://127.0.0.1:8080/x"), allow_private=False)
    with pytest.raises(BlockedURL):
        check_url(URL("file:///etc/passwd"), allow_private=True)
    check_url(URL("http://example.com/x"), allow_private=False)


async def test_resolver_drops_private_addresses_of_names() -> None:
    from hub.net import GuardedResolver

    with pytest.raises(BlockedURL, match="not an allowed destination"):
        await GuardedResolver(allow_private=False).resolve("localhost", 80)
    found = await GuardedResolver(allow_private=True).resolve("localhost", 80)
    assert found and all(r["host"] in ("127.0.0.1", "::1") for r in found)


async def test_guarded_fetch_refuses_loopback_by_name_and_literal() -> None:
    from hub.net import FetchError, fetch, guarded_session

    async with guarded_session(allow_private=False) as http:
        for url in ("http://localhost:9/x", "http://127.0.0.1:9/x", "http://[::1]:9/x"):
            with pytest.raises((FetchError, BlockedURL)):
                await fetch(http, url, allow_private=False, max_bytes=100, timeout_s=2)
