"""Each process's own Prometheus metrics, scraped over HTTP from the real `hub worker`,
`hub api` and `hub voice` processes, and compared with what the database says."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from hub.constants import QUEUES
from hub.dev.fake_twilio import FakeTwilio
from tests.conftest import Procs
from tests.e2e.test_email_flow import email
from tests.e2e.test_twilio import sms
from tests.helpers import Api, WebhookReceiver, eventually, free_port, free_ports

pytestmark = pytest.mark.e2e
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(http: aiohttp.ClientSession, url: str) -> Samples:
    """Every sample of a /metrics page, parsed by prometheus-client's own parser (which
    also proves the page is valid exposition text)."""
    async with http.get(url) as resp:
        assert resp.status == 200, await resp.text()
        text = await resp.text()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def pick(samples: Samples, name: str, *keys: str) -> dict[tuple[str, ...], float]:
    """{label values in `keys` order: value} for `name`, zeros left out."""
    return {tuple(dict(labels)[k] for k in keys): v
            for (n, labels), v in samples.items() if n == name and v}


async def serving(http: aiohttp.ClientSession, url: str, timeout_s: float = 30) -> Samples:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return await scrape(http, url)
        except aiohttp.ClientConnectionError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def _receipts(http: aiohttp.ClientSession, api_server: str) -> dict[tuple[str, ...], float]:
    return pick(await scrape(http, f"{api_server}/metrics"), "hub_receipts_total", "result")


async def test_worker_and_api_metrics_equal_the_database(
    api: Api, api_server: str, db: asyncpg.Pool, http: aiohttp.ClientSession, procs: Procs,
    email_transport: dict[str, Any], twilio_transport: Any, fake_twilio: FakeTwilio,
    receiver: WebhookReceiver,
) -> None:
    await twilio_transport()
    fake_twilio.scripts["+14155550102"] = ["undelivered:30005"]
    receipts_before = await _receipts(http, api_server)  # the API process is shared
    port = free_port()
    procs.worker(HUB_WORKER_METRICS_PORT=str(port))
    worker_url = f"http://127.0.0.1:{port}/metrics"
    await serving(http, worker_url)

    mail = await api.submit(email(["a@example.com", "b@example.com", "bounce@example.com"],
                                  webhookUrl=receiver.url))
    text = await api.submit(sms(["+14155550101", "+14155550102"]))
    await api.wait_status(mail["sessionId"])
    await api.wait_status(text["sessionId"])
    await eventually(lambda: _done(db), 20, "every webhook event delivered")

    got = await scrape(http, worker_url)
    attempts = {(r["t"], r["outcome"]): r["n"] for r in await db.fetch(
        "SELECT s.transport_type AS t, a.outcome, count(*) AS n FROM attempts a"
        " JOIN deliveries d ON d.id = a.delivery_id JOIN sessions s ON s.id = d.session_id"
        " GROUP BY 1, 2")}
    assert attempts[("email", "delivered")] == 2 and sum(attempts.values()) == 5
    # The outcome each attempt had when the worker recorded it: an SMS accepted by Twilio
    # is `sent` until its receipt (counted by the API) says more.
    sms_sent = await db.fetchval(
        "SELECT count(*) FROM attempts a JOIN deliveries d ON d.id = a.delivery_id"
        " JOIN sessions s ON s.id = d.session_id"
        " WHERE s.transport_type = 'sms' AND a.provider_ref IS NOT NULL")
    assert pick(got, "hub_attempts_total", "transport", "outcome") == {
        **{k: v for k, v in attempts.items() if k[0] == "email"}, ("sms", "sent"): sms_sent}
    per_transport = {(t,): 0.0 for t, _ in attempts}
    for (t, _), n in attempts.items():
        per_transport[(t,)] += n
    assert pick(got, "hub_attempt_duration_seconds_count", "transport") == per_transport
    assert all(v > 0 for v in pick(got, "hub_attempt_duration_seconds_sum", "transport").values())
    # The worker moved every email delivery to its final status and every SMS to
    # in_progress (waiting for Twilio's receipt); the API applied the receipts.
    email_final = {("email", r["status"]): r["n"] for r in await db.fetch(
        "SELECT d.status, count(*) AS n FROM deliveries d JOIN sessions s ON s.id = d.session_id"
        " WHERE s.transport_type = 'email' GROUP BY 1")}
    assert pick(got, "hub_delivery_results_total", "transport", "status") == {
        **email_final, ("sms", "in_progress"): 2}
    # Queue depth is sampled from Redis at scrape time: one sample per queue.
    assert {dict(labels)["queue"] for n, labels in got if n == "hub_queue_depth"} == set(QUEUES)
    webhooks = await db.fetchval("SELECT count(*) FROM webhook_attempts"
                                 " WHERE status_code BETWEEN 200 AND 299")
    assert webhooks >= 4
    assert pick(got, "hub_webhook_deliveries_total", "result") == {("delivered",): webhooks}
    assert got[("process_cpu_seconds_total", ())] > 0

    sms_final = await db.fetchval(
        "SELECT count(*) FROM deliveries d JOIN sessions s ON s.id = d.session_id"
        " WHERE s.transport_type = 'sms' AND d.status IN ('delivered', 'failed')")
    assert sms_final == 2

    async def applied() -> bool | None:
        now = await _receipts(http, api_server)
        return now.get(("applied",), 0) - receipts_before.get(("applied",), 0) == sms_final or None

    await eventually(applied, 10, "the API counted both receipts applied")


async def _done(db: asyncpg.Pool) -> bool | None:
    pending = await db.fetchval("SELECT count(*) FROM webhook_events WHERE status <> 'delivered'")
    total = await db.fetchval("SELECT count(*) FROM webhook_events")
    return (total >= 4 and pending == 0) or None


async def test_several_workers_on_one_host_take_the_next_port(
    db: asyncpg.Pool, http: aiohttp.ClientSession, procs: Procs,
) -> None:
    port = free_ports(2)  # the second worker's is the next one: it must be free too
    procs.worker(HUB_WORKER_METRICS_PORT=str(port))
    await serving(http, f"http://127.0.0.1:{port}/metrics")
    procs.worker(HUB_WORKER_METRICS_PORT=str(port))
    got = await serving(http, f"http://127.0.0.1:{port + 1}/metrics")
    assert any(n == "hub_queue_depth" for n, _ in got)


async def test_voice_without_asterisk_says_ari_is_down(
    db: asyncpg.Pool, http: aiohttp.ClientSession, procs: Procs,
) -> None:
    port = free_port()
    # Nothing listens on the ARI port given: the controller keeps trying, and says so.
    procs.start("voice", HUB_VOICE_METRICS_PORT=str(port),
                HUB_ARI_URL=f"http://127.0.0.1:{free_port()}", HUB_AMI_PORT=str(free_port()),
                HUB_VOICE_ID="metrics-test")
    got = await serving(http, f"http://127.0.0.1:{port}/metrics")
    assert got[("hub_ari_connected", ())] == 0
    assert got[("hub_ami_connected", ())] == 0
    assert ("hub_voice_call_setup_seconds_count", ()) in got
