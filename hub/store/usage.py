"""Usage per app, UTC day and transport type (DESIGN §3 `/v1/usage`, §6).

Which timestamp puts each figure on a day (all UTC):

- `sessions`: the session's `created_at`;
- `recipients`: the deliveries (one per address, cc/bcc copies included) of the sessions
  created that day, i.e. by the session's `created_at`;
- `attempts`: every attempt by its `started_at`;
- `callsAnswered`, `billableSeconds`: voice attempts with outcome `answered`, by the
  attempt's `started_at`; billable seconds are each call's talk time rounded up to the
  second, then summed;
- `smsSegments`: SMS/WhatsApp attempts the provider accepted (they have a provider
  reference), by the attempt's `started_at`: the segment count the provider answered
  (`detail.segments`, computed from the body when the provider gave none);
- `delivered`, `failed`: deliveries by the time they reached that final status
  (`deliveries.final_at`); a delivery counts once, in its current final status;
- `inboundCallbacks`: rows of `callbacks` (calls back from recipients) by their
  `started_at`, under transport `voice`.

The query is bounded: it reads only the app's sessions that were open during the range
(still open, or ended on/after its start, and created before its end; a delivery ends
and an attempt starts only while its session is open), their deliveries and attempts
through indexes (per session, per delivery: `OFFSET 0` keeps the planner from turning
these lookups into hash joins over whole tables), and the app's callbacks in the range.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import asyncpg

FIGURES = ("sessions", "recipients", "attempts", "delivered", "failed", "smsSegments",
           "callsAnswered", "billableSeconds", "inboundCallbacks")

DAILY_SQL = """
WITH s AS MATERIALIZED (
    SELECT id, transport_type, created_at FROM sessions
    WHERE app_id = $1 AND created_at < $3 AND (ended_at IS NULL OR ended_at >= $2)
), d AS MATERIALIZED (
    SELECT d.id, s.transport_type, s.created_at, d.status, d.final_at
    FROM s CROSS JOIN LATERAL (
        SELECT id, status, final_at FROM deliveries WHERE session_id = s.id OFFSET 0) d
), a AS MATERIALIZED (
    SELECT d.transport_type, a.started_at, a.outcome, a.detail, a.provider_ref
    FROM d CROSS JOIN LATERAL (
        SELECT started_at, outcome, detail, provider_ref FROM attempts
        WHERE delivery_id = d.id AND started_at >= $2 AND started_at < $3 OFFSET 0) a
), rows AS (
    SELECT (created_at AT TIME ZONE 'UTC')::date AS day, transport_type AS transport,
           count(*) AS sessions, 0::bigint AS recipients, 0::bigint AS attempts,
           0::bigint AS delivered, 0::bigint AS failed, 0::bigint AS sms_segments,
           0::bigint AS calls_answered, 0::bigint AS billable_s, 0::bigint AS callbacks
    FROM s WHERE created_at >= $2 GROUP BY 1, 2
    UNION ALL
    SELECT (created_at AT TIME ZONE 'UTC')::date, transport_type,
           0, count(*), 0, 0, 0, 0, 0, 0, 0
    FROM d WHERE created_at >= $2 GROUP BY 1, 2
    UNION ALL
    SELECT (final_at AT TIME ZONE 'UTC')::date, transport_type,
           0, 0, 0, count(*) FILTER (WHERE status = 'delivered'),
           count(*) FILTER (WHERE status = 'failed'), 0, 0, 0, 0
    FROM d WHERE final_at >= $2 AND final_at < $3 AND status IN ('delivered', 'failed')
    GROUP BY 1, 2
    UNION ALL
    SELECT (started_at AT TIME ZONE 'UTC')::date, transport_type,
           0, 0, count(*), 0, 0,
           coalesce(sum((detail->>'segments')::bigint)
                    FILTER (WHERE transport_type IN ('sms', 'whatsapp')
                            AND provider_ref IS NOT NULL), 0),
           count(*) FILTER (WHERE outcome = 'answered'),
           coalesce(sum(ceil((detail->>'talkS')::numeric))
                    FILTER (WHERE outcome = 'answered'), 0)::bigint,
           0
    FROM a GROUP BY 1, 2
    UNION ALL
    SELECT (started_at AT TIME ZONE 'UTC')::date, 'voice', 0, 0, 0, 0, 0, 0, 0, 0, count(*)
    FROM callbacks WHERE app_id = $1 AND started_at >= $2 AND started_at < $3
    GROUP BY 1
)
SELECT day, transport, sum(sessions) AS sessions, sum(recipients) AS recipients,
       sum(attempts) AS attempts, sum(delivered) AS delivered, sum(failed) AS failed,
       sum(sms_segments) AS sms_segments, sum(calls_answered) AS calls_answered,
       sum(billable_s) AS billable_s, sum(callbacks) AS callbacks
FROM rows GROUP BY day, transport ORDER BY day, transport
"""
_COLUMNS = {"sessions": "sessions", "recipients": "recipients", "attempts": "attempts",
            "delivered": "delivered", "failed": "failed", "smsSegments": "sms_segments",
            "callsAnswered": "calls_answered", "billableSeconds": "billable_s",
            "inboundCallbacks": "callbacks"}


def day_start(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)


async def daily(conn: asyncpg.Pool | asyncpg.Connection, app_id: uuid.UUID,
                date_from: dt.date, date_to: dt.date) -> list[dict[str, Any]]:
    """The app's figures per UTC day in [date_from, date_to] and transport type, sorted by
    date then transport; rows whose figures are all zero are left out."""
    if isinstance(conn, asyncpg.Pool):
        async with conn.acquire() as own:
            return await daily(own, app_id, date_from, date_to)
    async with conn.transaction():
        # The planner cannot know how few sessions the range holds; its estimate can pass
        # the JIT threshold and JIT compiling then costs far more than the query.
        await conn.execute("SET LOCAL jit = off")
        rows = await conn.fetch(DAILY_SQL, app_id, day_start(date_from),
                                day_start(date_to + dt.timedelta(days=1)))
    items = []
    for r in rows:
        item: dict[str, Any] = {"date": r["day"].isoformat(), "transport": r["transport"]}
        item.update({key: int(r[col]) for key, col in _COLUMNS.items()})
        if any(item[k] for k in FIGURES):
            items.append(item)
    return items
