"""Opaque cursors for keyset pagination.

A cursor is the base64 of a JSON list: `[id]` (a row id, e.g. deliveries) or
`[createdAt, id]` (an ISO-8601 timestamp with offset and a UUID: sessions, suppressions).
`decode` accepts only those shapes, with each value in range, so that a forged or
truncated cursor is a `bad-cursor` answer and never reaches a query.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from hub.errors import BadRequest, detail

MAX_ID = 2**63 - 1  # bigint
MIN_TIME = datetime(1970, 1, 1, tzinfo=UTC)
MAX_TIME = datetime(9000, 1, 1, tzinfo=UTC)


def encode(values: list[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(values).encode()).decode().rstrip("=")


def _row_id(value: Any) -> int:
    if type(value) is not int or not 0 <= value <= MAX_ID:
        raise ValueError("not a row id")
    return value


def _timestamp(value: Any) -> str:
    parsed = datetime.fromisoformat(value) if isinstance(value, str) else None
    if parsed is None or parsed.tzinfo is None or not MIN_TIME <= parsed <= MAX_TIME:
        raise ValueError("not a timestamp with an offset")
    return parsed.isoformat()


def _uuid(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("not a UUID")
    return str(uuid.UUID(value))


SHAPES: dict[int, tuple[Callable[[Any], Any], ...]] = {1: (_row_id,), 2: (_timestamp, _uuid)}


def decode(cursor: str, size: int) -> list[Any]:
    """The values of a cursor this API returned (shapes above), or 400 `bad-cursor`."""
    try:
        padded = cursor.encode("ascii") + b"=" * (-len(cursor) % 4)
        values = json.loads(base64.urlsafe_b64decode(padded))
        if isinstance(values, list) and len(values) == size:
            return [check(v) for check, v in zip(SHAPES[size], values, strict=True)]
    except (ValueError, TypeError, OverflowError, binascii.Error, RecursionError):
        pass
    raise BadRequest("the cursor is not one this API returned; start again without it",
                     error_id="bad-cursor", details=[detail(["query", "cursor"], "invalid")])


def page_of(rows: list[Any], limit: int, key: Any) -> tuple[list[Any], str | None]:
    """Rows fetched with LIMIT limit + 1 → (the page, the cursor of the next page or None);
    `key(row)` gives the values the next page starts after."""
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (encode(key(rows[-1])) if more else None)
