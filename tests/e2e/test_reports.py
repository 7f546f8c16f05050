"""Session reports for every channel: an email session refused with SMTP 4xx/5xx replies by
aiosmtpd and an SMS session failed with Twilio error codes report the providers' codes
with counts, attempts per recipient and latency percentiles, in JSON, CSV and the CLI."""

from __future__ import annotations

import csv
import io
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from hub.dev.fake_twilio import FakeTwilio
from hub.dev.smtp import SmtpSink
from hub.reports import ROWS_MAX
from tests.conftest import Procs
from tests.e2e.test_cli import hub
from tests.e2e.test_usage import seed_voice
from tests.helpers import Api

pytestmark = pytest.mark.e2e


def percentile_cont(values: list[float], q: float) -> float:
    """PostgreSQL's percentile_cont: linear interpolation between the closest ranks."""
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


async def latencies(db: asyncpg.Pool, sid: str) -> list[float]:
    rows = await db.fetch(
        "SELECT extract(epoch FROM d.final_at - s.created_at)::float8 AS s"
        " FROM deliveries d JOIN sessions s ON s.id = d.session_id"
        " WHERE d.session_id = $1 AND d.status IN ('delivered', 'failed')", uuid.UUID(sid))
    return [r["s"] for r in rows]


def split_csv(text: str) -> tuple[list[dict[str, str]], list[list[str]]]:
    rows_part, summary_part = text.split("\n\n", 1)
    return (list(csv.DictReader(io.StringIO(rows_part))),
            list(csv.reader(io.StringIO(summary_part))))


def check_latency(report: dict[str, Any], values: list[float]) -> None:
    lat = report["latency"]
    assert lat["deliveries"] == len(values)
    for name, q in (("p50S", 0.5), ("p90S", 0.9), ("p99S", 0.99)):
        assert lat[name] == pytest.approx(percentile_cont(values, q), abs=0.0015), name
    assert lat["p50S"] <= lat["p90S"] <= lat["p99S"]


async def test_email_report_counts_smtp_codes_attempts_and_latency(
    api: Api, db: asyncpg.Pool, email_transport: dict[str, Any],
    smtp_sink: tuple[int, SmtpSink], procs: Procs, api_server: str,
) -> None:
    _, sink = smtp_sink
    sink.scripts["slow@example.com"] = ["451 4.3.0 try later"]
    sink.scripts["full@example.com"] = ["452 4.2.2 mailbox full", "452 4.2.2 mailbox full"]
    procs.worker()
    created = await api.submit({
        "transport": {"type": "email", "subject": "Report", "message": "Hello"},
        "audience": ["ok@example.com", "slow@example.com", "full@example.com",
                     "bounce1@example.com", "bounce2@example.com"],
        "options": {"retries": 1, "retryIntervalMinutes": "0.01"}})
    sid = created["sessionId"]
    await api.wait_status(sid, timeout_s=40)

    status, report = await api.get(f"/v1/sessions/{sid}/report")
    assert status == 200, report
    assert report["byStatus"] == {"delivered": 2, "failed": 3}
    assert report["attempts"] == 7 and report["recipients"] == 5
    assert report["attemptsPerRecipient"] == {"1": 3, "2": 2}
    codes = {(c["kind"], c["code"]): c["attempts"] for c in report["errorCodes"]}
    assert codes == {("smtp", "550"): 2, ("smtp", "452"): 2, ("smtp", "451"): 1}
    assert [c["attempts"] for c in report["errorCodes"]] == [2, 2, 1]  # most frequent first
    example = next(c["example"] for c in report["errorCodes"] if c["code"] == "550")
    assert example.startswith("SMTP 550")
    values = await latencies(db, sid)
    check_latency(report, values)
    assert report["latency"]["p99S"] >= 0.6  # the retried ones waited 0.6 s
    rows = {r["address"]: r for r in report["rows"]}
    assert rows["slow@example.com"]["attempts"] == 2 and rows["slow@example.com"]["finalAt"]
    assert report["rowsTruncated"] is False

    status, text = await api.get(f"/v1/sessions/{sid}/report?format=csv")
    assert status == 200
    csv_rows, summary = split_csv(text)
    assert {r["address"]: (r["status"], r["attempts"]) for r in csv_rows} == {
        r["address"]: (r["status"], str(r["attempts"])) for r in report["rows"]}
    assert summary[0] == ["figure", "key", "value"]
    assert ["errorCode", "smtp 550", "2"] in summary and ["errorCode", "smtp 451", "1"] in summary
    assert ["attemptsPerRecipient", "2", "2"] in summary
    assert ["latency", "p90S", str(report["latency"]["p90S"])] in summary

    env = {"HUB_API_URL": api_server, "HUB_API_KEY": api.key}
    out = hub("report", sid, **env)
    assert out.returncode == 0, out.stderr
    assert "error codes: smtp 452 ×2, smtp 550 ×2, smtp 451 ×1" in out.stdout
    assert "latency to final state: p50" in out.stdout
    out = hub("report", sid, "--csv", **env)
    assert out.returncode == 0 and split_csv(out.stdout)[1] == summary


async def test_sms_report_counts_twilio_error_codes(
    api: Api, db: asyncpg.Pool, twilio_transport: Any, fake_twilio: FakeTwilio, procs: Procs,
) -> None:
    await twilio_transport()
    fake_twilio.scripts["+14155550102"] = ["undelivered:30005"]
    fake_twilio.scripts["+14155550103"] = ["undelivered:30005"]
    fake_twilio.scripts["+14155550104"] = ["error:21211"]
    fake_twilio.scripts["+14155550105"] = ["error:500", "error:500"]
    procs.worker()
    created = await api.submit({
        "transport": {"type": "sms", "message": "Namaste " * 30},  # 240 chars: 2 segments
        "audience": ["+14155550101", "+14155550102", "+14155550103", "+14155550104",
                     "+14155550105"],
        "options": {"retries": 1, "retryIntervalMinutes": "0.01"}})
    sid = created["sessionId"]
    await api.wait_status(sid, timeout_s=40)
    status, report = await api.get(f"/v1/sessions/{sid}/report")
    assert status == 200, report
    assert report["byStatus"] == {"delivered": 1, "failed": 4}
    codes = {(c["kind"], c["code"]): c["attempts"] for c in report["errorCodes"]}
    # 30005 is permanent (no retry); the answered 500 is retried once, then fails.
    assert codes == {("twilio", "30005"): 2, ("twilio", "21211"): 1, ("twilio", "500"): 2}
    assert report["attemptsPerRecipient"] == {"1": 4, "2": 1}
    check_latency(report, await latencies(db, sid))
    # Every attempt Twilio accepted keeps the segment count it answered.
    segs = await db.fetch(
        "SELECT d.address, a.detail->>'segments' AS n FROM attempts a"
        " JOIN deliveries d ON d.id = a.delivery_id WHERE d.session_id = $1"
        " AND a.provider_ref IS NOT NULL", uuid.UUID(sid))
    assert sorted((r["address"], r["n"]) for r in segs) == [
        ("+14155550101", "2"), ("+14155550102", "2"), ("+14155550103", "2")]
    status, text = await api.get(f"/v1/sessions/{sid}/report?format=csv")
    _, summary = split_csv(text)
    assert ["errorCode", "twilio 30005", "2"] in summary and ["errorCode", "twilio 500", "2"] in summary


async def test_big_session_report_stays_bounded_and_csv_has_every_row(
    api: Api, db: asyncpg.Pool,
) -> None:
    now = datetime.now(UTC)
    await seed_voice(db, api.app.app_id, now, now, [])
    sid = await db.fetchval("SELECT id FROM sessions WHERE app_id = $1", api.app.app_id)
    n = ROWS_MAX + 1500
    await db.execute(
        "INSERT INTO deliveries (session_id, address, status, attempts)"
        " SELECT $1, '+977980' || lpad(i::text, 7, '0'), 'failed', 1"
        " FROM generate_series(1, $2) i", sid, n)
    status, report = await api.get(f"/v1/sessions/{sid}/report")
    assert status == 200
    assert report["recipients"] == n and report["attemptsPerRecipient"] == {"1": n}
    assert len(report["rows"]) == ROWS_MAX and report["rowsTruncated"] is True
    status, text = await api.get(f"/v1/sessions/{sid}/report?format=csv")
    rows, summary = split_csv(text)
    assert len(rows) == n and len({r["address"] for r in rows}) == n
    assert ["recipients", "", str(n)] in summary
