"""Session reports (DESIGN §6), for every channel: counts by final status and by attempt
outcome, provider error codes with counts, attempts per recipient, latency from the
session's start to each delivery's final state (p50/p90/p99), voice call figures (ASR,
ACD, hangup causes, ring time), and per-recipient rows.

Every summary figure is one aggregate query; only the per-recipient rows grow with the
session: the JSON report carries at most ROWS_MAX of them (`rowsTruncated` says when there
are more; `/v1/sessions/{id}/deliveries` pages through all), the CSV streams them all in
keyset-paged batches."""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg

from hub.store import sessions

ROWS_MAX = 10_000        # per-recipient rows in a JSON report
ROWS_BATCH = 1_000       # rows per query when streaming the CSV

SUMMARY_SQL = """
SELECT a.outcome, count(*) AS n,
       avg((a.detail->>'talkS')::float8) FILTER (WHERE a.outcome = 'answered') AS acd,
       avg((a.detail->>'ringS')::float8) AS ring
FROM attempts a JOIN deliveries d ON d.id = a.delivery_id
WHERE d.session_id = $1 AND a.ended_at IS NOT NULL
GROUP BY a.outcome
"""
CAUSES_SQL = """
SELECT a.detail->>'cause' AS cause, max(a.detail->>'causeText') AS text, count(*) AS n
FROM attempts a JOIN deliveries d ON d.id = a.delivery_id
WHERE d.session_id = $1 AND a.detail ? 'cause'
GROUP BY 1 ORDER BY 3 DESC
"""
# The provider's code of each failed attempt (one with an error): the SMTP reply code, the
# Twilio error code (else its HTTP status), Slack's error, the SIP status of a call, or
# the HTTP status of an API/Slack answer; "none" when nothing answered (e.g. connection
# refused, interrupted), with one of the errors as an example.
CODES_SQL = """
SELECT k.kind, k.code, count(*) AS n, min(a.error) AS example
FROM attempts a JOIN deliveries d ON d.id = a.delivery_id
CROSS JOIN LATERAL (SELECT CASE
        WHEN a.detail->>'smtpCode' IS NOT NULL THEN 'smtp'
        WHEN a.detail->>'errorCode' IS NOT NULL THEN 'twilio'
        WHEN a.detail->>'slackError' IS NOT NULL THEN 'slack'
        WHEN a.detail->>'sipCode' IS NOT NULL THEN 'sip'
        WHEN a.detail->>'httpStatus' IS NOT NULL THEN 'http'
        ELSE 'none' END AS kind,
    coalesce(a.detail->>'smtpCode', a.detail->>'errorCode', a.detail->>'slackError',
             a.detail->>'sipCode', a.detail->>'httpStatus') AS code) k
WHERE d.session_id = $1 AND a.error IS NOT NULL
GROUP BY 1, 2 ORDER BY 3 DESC, 1, 2
"""
PER_RECIPIENT_SQL = """
SELECT attempts, count(*) AS n FROM deliveries WHERE session_id = $1 GROUP BY 1 ORDER BY 1
"""
# Seconds from the session's start (its creation, or its scheduled time if later) to the
# time each delivered or failed delivery reached that status.
LATENCY_SQL = """
SELECT count(*) AS n, percentile_cont(ARRAY[0.5, 0.9, 0.99]) WITHIN GROUP (ORDER BY
       extract(epoch FROM d.final_at - greatest(s.created_at, coalesce(s.scheduled_at,
       s.created_at)))) AS p
FROM deliveries d JOIN sessions s ON s.id = d.session_id
WHERE d.session_id = $1 AND d.status IN ('delivered', 'failed') AND d.final_at IS NOT NULL
"""
ROWS_SQL = """
SELECT id, address, status, attempts, outcome, duration_s, provider_ref, last_attempt_at,
       final_at, error
FROM deliveries WHERE session_id = $1 AND id > $2 ORDER BY id LIMIT $3
"""
ROW_COLUMNS = ("address", "status", "attempts", "outcome", "durationS", "providerRef",
               "lastAttemptAt", "finalAt", "error")


async def build(conn: asyncpg.Pool | asyncpg.Connection, session: Any,
                rows_max: int = ROWS_MAX) -> dict[str, Any]:
    sid: uuid.UUID = session["id"]
    by_outcome = {r["outcome"]: r for r in await conn.fetch(SUMMARY_SQL, sid)}
    attempts = sum(r["n"] for r in by_outcome.values())
    per_recipient = {str(r["attempts"]): r["n"] for r in await conn.fetch(PER_RECIPIENT_SQL, sid)}
    by_status = await sessions.counts(conn, sid)
    rows = await conn.fetch(ROWS_SQL, sid, 0, rows_max + 1)
    latency = await conn.fetchrow(LATENCY_SQL, sid)
    report: dict[str, Any] = {
        "session": sessions.view(session, by_status),
        "recipients": sum(per_recipient.values()),
        "attempts": attempts,
        "byStatus": by_status,
        "byOutcome": {k: v["n"] for k, v in sorted(by_outcome.items())},
        "attemptsPerRecipient": per_recipient,
        "errorCodes": [{"kind": r["kind"], "code": r["code"], "attempts": r["n"],
                        "example": r["example"]} for r in await conn.fetch(CODES_SQL, sid)],
        "latency": _latency(latency),
        "rows": [_row(r) for r in rows[:rows_max]],
        "rowsTruncated": len(rows) > rows_max,
    }
    if session["transport_type"] == "voice":
        answered = by_outcome.get("answered")
        rings = [v["ring"] for v in by_outcome.values() if v["ring"] is not None]
        report["voice"] = {
            "asr": round(answered["n"] / attempts, 4) if answered and attempts else 0.0,
            "acdS": round(answered["acd"] or 0.0, 2) if answered else 0.0,
            "meanRingS": round(sum(rings) / len(rings), 2) if rings else 0.0,
            "hangupCauses": [{"cause": int(r["cause"]) if r["cause"] else None,
                              "text": r["text"], "calls": r["n"]}
                             for r in await conn.fetch(CAUSES_SQL, sid)],
        }
    return report


def _latency(row: Any) -> dict[str, Any]:
    p = row["p"] if row is not None and row["n"] else None
    return {"deliveries": row["n"] if row is not None else 0,
            **{name: round(float(p[i]), 3) if p else None
               for i, name in enumerate(("p50S", "p90S", "p99S"))}}


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def _row(r: Any) -> dict[str, Any]:
    return {
        "address": r["address"], "status": r["status"], "attempts": r["attempts"],
        "outcome": r["outcome"], "durationS": r["duration_s"], "providerRef": r["provider_ref"],
        "lastAttemptAt": _iso(r["last_attempt_at"]), "finalAt": _iso(r["final_at"]),
        "error": r["error"],
    }


async def all_rows(conn: asyncpg.Pool | asyncpg.Connection, session_id: uuid.UUID,
                   batch: int = ROWS_BATCH) -> AsyncIterator[list[dict[str, Any]]]:
    """Every per-recipient row, in batches (keyset pages by delivery id)."""
    after = 0
    while True:
        rows = await conn.fetch(ROWS_SQL, session_id, after, batch)
        if not rows:
            return
        yield [_row(r) for r in rows]
        after = rows[-1]["id"]


def csv_rows(rows: list[dict[str, Any]], header: bool = False) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=ROW_COLUMNS, lineterminator="\n")
    if header:
        writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def csv_summary(report: dict[str, Any]) -> str:
    """The summary as `figure,key,value` lines (after the rows and a blank line)."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(("figure", "key", "value"))
    w.writerow(("recipients", "", report["recipients"]))
    w.writerow(("attempts", "", report["attempts"]))
    for name in ("byStatus", "byOutcome", "attemptsPerRecipient"):
        for key, value in report[name].items():
            w.writerow((name, key, value))
    for c in report["errorCodes"]:
        w.writerow(("errorCode", f"{c['kind']} {c['code'] or '-'}", c["attempts"]))
    for key in ("deliveries", "p50S", "p90S", "p99S"):
        value = report["latency"][key]
        w.writerow(("latency", key, "" if value is None else value))
    if "voice" in report:
        v = report["voice"]
        for key in ("asr", "acdS", "meanRingS"):
            w.writerow(("voice", key, v[key]))
        for cause in v["hangupCauses"]:
            w.writerow(("hangupCause", cause["cause"], cause["calls"]))
    return out.getvalue()


def to_csv(report: dict[str, Any]) -> str:
    """A whole report as CSV: the rows it carries, a blank line, the summary."""
    return csv_rows(report["rows"], header=True) + "\n" + csv_summary(report)


def to_text(report: dict[str, Any]) -> str:
    """A report for people: summary figures, then one line per recipient."""
    s = report["session"]
    lines = [
        f"Session {s['sessionId']} ({s['transport']}) — {s['status']}",
        f"  recipients {report['recipients']}, attempts {report['attempts']}",
        "  by status:  " + ", ".join(f"{k} {v}" for k, v in sorted(report["byStatus"].items())),
        "  by outcome: " + ", ".join(f"{k} {v}" for k, v in report["byOutcome"].items()),
        "  attempts per recipient: " + ", ".join(
            f"{k}×{v}" for k, v in report["attemptsPerRecipient"].items()),
    ]
    if report.get("errorCodes"):
        lines.append("  error codes: " + ", ".join(
            f"{c['kind']} {c['code'] or '-'} ×{c['attempts']}" for c in report["errorCodes"]))
    lat = report.get("latency") or {}
    if lat.get("deliveries"):
        lines.append(f"  latency to final state: p50 {lat['p50S']:.1f}s  p90 {lat['p90S']:.1f}s"
                     f"  p99 {lat['p99S']:.1f}s ({lat['deliveries']} deliveries)")
    if "voice" in report:
        v = report["voice"]
        lines.append(f"  ASR {v['asr']:.0%}  ACD {v['acdS']:.1f}s  mean ring {v['meanRingS']:.1f}s")
        lines += [f"  cause {c['cause']} {c['text']}: {c['calls']}" for c in v["hangupCauses"]]
    lines.append("")
    lines.append(f"  {'address':<28} {'status':<16} {'att':>3}  {'outcome':<18} detail")
    for r in report["rows"]:
        note = r["error"] or (f"listened {r['durationS']:.1f} s" if r["durationS"] else "")
        lines.append(f"  {r['address']:<28} {r['status']:<16} {r['attempts']:>3}  "
                     f"{(r['outcome'] or '-'):<18} {note}")
    if report.get("rowsTruncated"):
        lines.append(f"  ... first {len(report['rows'])} recipients; --csv lists them all")
    return "\n".join(lines)
