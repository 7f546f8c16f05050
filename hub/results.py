"""The values a transport and the engine exchange about one recipient's attempt. They sit
below the store, the jobs and the transports, which all speak them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Recipient:
    delivery_id: int
    attempt_id: str
    attempt: int
    address: str
    role: str = "to"  # "to": one of the audience; "cc"/"bcc": the session's single copy


@dataclass(frozen=True)
class Result:
    """What one attempt did. `retryable` only matters when `delivered` is false.

    `defer_s`: the provider asked us to come back later (rate limit, daily cap): the
    delivery waits that long without spending a retry. `receipt_s`: the provider accepted
    the message and will report its fate (status callback); the delivery stays
    `in_progress` until then, or until this many seconds have passed.
    """

    outcome: str
    delivered: bool = False
    retryable: bool = False
    provider_ref: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    defer_s: float | None = None
    receipt_s: float | None = None
    attempted: bool = True  # false: nothing was sent (e.g. over the daily cap)
