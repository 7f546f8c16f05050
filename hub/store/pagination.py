"""Opaque cursors for keyset pagination."""

from __future__ import annotations

import base64
import json
from typing import Any

from hub.errors import BadRequest, detail


def encode(values: list[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(values).encode()).decode().rstrip("=")


def decode(cursor: str, size: int) -> list[Any]:
    try:
        values = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if isinstance(values, list) and len(values) == size:
            return values
    except (ValueError, TypeError):
        pass
    raise BadRequest("the cursor is not one this API returned; start again without it",
                     error_id="bad-cursor", details=[detail(["query", "cursor"], "invalid")])


def page_of(rows: list[Any], limit: int, key: Any) -> tuple[list[Any], str | None]:
    """Rows fetched with LIMIT limit + 1 → (the page, the cursor of the next page or None);
    `key(row)` gives the values the next page starts after."""
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (encode(key(rows[-1])) if more else None)
