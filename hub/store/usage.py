"""Usage per app, UTC day and transport type (DESIGN §3 `/v1/usage`, §6).

A minimal stand-in with the agreed signature for the dashboard; the usage feature owns
the full version. Sessions and recipients count on the day a session was created;
attempts, answered calls, billable seconds (talk time rounded up per call) and SMS
segments on the day an attempt ended; delivered/failed on the day a delivery's last
attempt ended; inbound callbacks on the day they arrived. Days with nothing are omitted.
"""

from __future__ import annotations

import uuid
from datetime import date, timedelta
from typing import Any

import asyncpg

USAGE_SQL = """
WITH bounds AS (SELECT $2::date::timestamp AT TIME ZONE 'UTC' AS lo,
                       ($3::date + 1)::timestamp AT TIME ZONE 'UTC' AS hi),
s AS (
  SELECT (s.created_at AT TIME ZONE 'UTC')::date AS day, s.transport_type AS transport,
         count(*) AS sessions, sum(s.audience_count) AS recipients
  FROM sessions s, bounds b
  WHERE s.app_id = $1 AND s.created_at >= b.lo AND s.created_at < b.hi GROUP BY 1, 2),
a AS (
  SELECT (a.ended_at AT TIME ZONE 'UTC')::date AS day, s.transport_type AS transport,
         count(*) AS attempts,
         count(*) FILTER (WHERE s.transport_type = 'voice' AND a.outcome = 'answered')
           AS calls_answered,
         coalesce(sum(ceil((a.detail->>'talkS')::float8))
           FILTER (WHERE s.transport_type = 'voice' AND a.outcome = 'answered'), 0)
           AS billable_seconds,
         coalesce(sum((a.detail->>'segments')::int)
           FILTER (WHERE s.transport_type = 'sms' AND jsonb_typeof(a.detail->'segments')
                   = 'number'), 0) AS sms_segments
  FROM attempts a JOIN deliveries d ON d.id = a.delivery_id
  JOIN sessions s ON s.id = d.session_id, bounds b
  WHERE s.app_id = $1 AND a.ended_at >= b.lo AND a.ended_at < b.hi GROUP BY 1, 2),
d AS (
  SELECT (d.last_attempt_at AT TIME ZONE 'UTC')::date AS day, s.transport_type AS transport,
         count(*) FILTER (WHERE d.status = 'delivered') AS delivered,
         count(*) FILTER (WHERE d.status = 'failed') AS failed
  FROM deliveries d JOIN sessions s ON s.id = d.session_id, bounds b
  WHERE s.app_id = $1 AND d.status IN ('delivered', 'failed')
    AND d.last_attempt_at >= b.lo AND d.last_attempt_at < b.hi GROUP BY 1, 2),
c AS (
  SELECT (c.started_at AT TIME ZONE 'UTC')::date AS day, 'voice'::text AS transport,
         count(*) AS inbound_callbacks
  FROM callbacks c, bounds b
  WHERE c.app_id = $1 AND c.started_at >= b.lo AND c.started_at < b.hi GROUP BY 1, 2)
SELECT day, transport,
       coalesce(s.sessions, 0) AS sessions, coalesce(s.recipients, 0) AS recipients,
       coalesce(a.attempts, 0) AS attempts, coalesce(d.delivered, 0) AS delivered,
       coalesce(d.failed, 0) AS failed, coalesce(a.sms_segments, 0) AS sms_segments,
       coalesce(a.calls_answered, 0) AS calls_answered,
       coalesce(a.billable_seconds, 0) AS billable_seconds,
       coalesce(c.inbound_callbacks, 0) AS inbound_callbacks
FROM s FULL JOIN a USING (day, transport) FULL JOIN d USING (day, transport)
FULL JOIN c USING (day, transport)
ORDER BY day, transport
"""
FIELDS = (("sessions", "sessions"), ("recipients", "recipients"), ("attempts", "attempts"),
          ("delivered", "delivered"), ("failed", "failed"), ("smsSegments", "sms_segments"),
          ("callsAnswered", "calls_answered"), ("billableSeconds", "billable_seconds"),
          ("inboundCallbacks", "inbound_callbacks"))


async def daily(conn: asyncpg.Pool | asyncpg.Connection, app_id: uuid.UUID, date_from: date,
                date_to: date) -> list[dict[str, Any]]:
    """One item per UTC day and transport type from `date_from` to `date_to` (inclusive)."""
    if date_to < date_from:
        return []
    rows = await conn.fetch(USAGE_SQL, app_id, date_from, min(date_to, date.max - timedelta(1)))
    items = []
    for r in rows:
        item: dict[str, Any] = {"date": r["day"].isoformat(), "transport": r["transport"]}
        item.update({wire: int(r[col]) for wire, col in FIELDS})
        if any(item[wire] for wire, _ in FIELDS):
            items.append(item)
    return items
