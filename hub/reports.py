"""Session reports (DESIGN §6): counts by final status and by attempt outcome, attempts
per recipient, voice call figures (ASR, ACD, hangup causes, ring time), per-recipient rows."""

from __future__ import annotations

import csv
import io
import uuid
from typing import Any

import asyncpg

from hub.store import sessions

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
ROW_COLUMNS = ("address", "status", "attempts", "outcome", "durationS", "providerRef",
               "lastAttemptAt", "error")


async def build(conn: asyncpg.Pool | asyncpg.Connection, session: Any) -> dict[str, Any]:
    sid: uuid.UUID = session["id"]
    by_outcome = {r["outcome"]: r for r in await conn.fetch(SUMMARY_SQL, sid)}
    attempts = sum(r["n"] for r in by_outcome.values())
    rows = await conn.fetch(
        "SELECT address, status, attempts, outcome, duration_s, provider_ref, last_attempt_at,"
        " error FROM deliveries WHERE session_id = $1 ORDER BY id", sid)
    per_recipient: dict[str, int] = {}
    for r in rows:
        per_recipient[str(r["attempts"])] = per_recipient.get(str(r["attempts"]), 0) + 1
    report: dict[str, Any] = {
        "session": sessions.view(session, await sessions.counts(conn, sid)),
        "recipients": len(rows),
        "attempts": attempts,
        "byStatus": await sessions.counts(conn, sid),
        "byOutcome": {k: v["n"] for k, v in sorted(by_outcome.items())},
        "attemptsPerRecipient": dict(sorted(per_recipient.items(), key=lambda kv: int(kv[0]))),
        "rows": [_row(r) for r in rows],
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


def _row(r: Any) -> dict[str, Any]:
    return {
        "address": r["address"], "status": r["status"], "attempts": r["attempts"],
        "outcome": r["outcome"], "durationS": r["duration_s"], "providerRef": r["provider_ref"],
        "lastAttemptAt": r["last_attempt_at"].isoformat() if r["last_attempt_at"] else None,
        "error": r["error"],
    }


def to_csv(report: dict[str, Any]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=ROW_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in report["rows"]:
        writer.writerow(row)
    return out.getvalue()


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
    return "\n".join(lines)
