"""Retry policy (DESIGN §4): what a finished attempt does to its delivery."""

from __future__ import annotations

from dataclasses import dataclass

from hub import constants as c
from hub.results import Result


@dataclass(frozen=True)
class Decision:
    status: str
    delay_s: float | None = None  # retry_scheduled: when; in_progress: receipt deadline
    spends_try: bool = True       # false when the provider only asked us to wait


def interval_s(intervals_s: list[float], retry_number: int) -> float:
    """Seconds before retry N (1-based); the last interval repeats."""
    return intervals_s[min(retry_number, len(intervals_s)) - 1]


def decide(
    result: Result, *, tries: int, retries: int, intervals_s: list[float]
) -> Decision:
    """`tries` counts this attempt; `retries` extra attempts are allowed after the first."""
    if result.defer_s is not None:
        return Decision(c.D_RETRY, result.defer_s, spends_try=False)
    if result.receipt_s is not None:
        return Decision(c.D_IN_PROGRESS, result.receipt_s)
    if result.delivered:
        return Decision(c.D_DELIVERED)
    if result.retryable and tries <= retries:
        return Decision(c.D_RETRY, interval_s(intervals_s, tries))
    return Decision(c.D_FAILED)


def when_cancelled(decision: Decision) -> Decision:
    """A cancelled session starts no new attempt: a retry becomes `cancelled`."""
    return Decision(c.D_CANCELLED) if decision.status == c.D_RETRY else decision
