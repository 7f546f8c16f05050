"""How a call's end maps to its outcome (DESIGN §4, §8.6), from `ChannelDestroyed`'s cause
and `tech_cause`, as Asterisk 22 reports them (see ASTERISK.md): the trunk refusing a call
(credentials, credit, its own failure) is a failed attempt worth retrying, never the
callee's decline."""

from __future__ import annotations

import pytest

from hub.voice.outcomes import classify, trunk_problem_note


@pytest.mark.parametrize(("cause", "sip", "outcome", "retry"), [
    (17, 486, "busy", True), (17, 600, "busy", True), (19, 480, "no_answer", True),
    (18, 408, "no_answer", True), (1, 404, "invalid_number", False),
    (1, 410, "invalid_number", False), (28, 484, "invalid_number", False),
    (21, 603, "rejected", False), (21, None, "rejected", False),
    (34, 503, "congestion", True), (38, 502, "congestion", True), (102, 504, "congestion", True),
    (127, None, "failed", True), (None, None, "failed", True), (16, 486, "busy", True),
    (58, 488, "failed", True),
])
def test_callee_side_outcomes(cause: int | None, sip: int | None, outcome: str,
                              retry: bool) -> None:
    got = classify(answered=False, played=False, cause=cause, sip_code=sip)
    assert (got.outcome, got.retryable, got.delivered, got.trunk_problem) == (
        outcome, retry, False, False)


@pytest.mark.parametrize(("cause", "sip"), [
    (21, 401), (21, 403), (21, 407),      # Asterisk maps auth/credit refusals to cause 21
    (38, 500), (79, 501), (127, 505), (127, 513), (127, 580),  # the trunk's own failures
    (None, 403), (0, 407),
])
def test_trunk_refusals_are_failed_retryable_trunk_problems(cause: int | None, sip: int) -> None:
    got = classify(answered=False, played=False, cause=cause, sip_code=sip)
    assert (got.outcome, got.retryable, got.delivered, got.trunk_problem) == (
        "failed", True, False, True)


def test_603_stays_a_decline_and_403_does_not() -> None:
    declined = classify(answered=False, played=False, cause=21, sip_code=603)
    refused = classify(answered=False, played=False, cause=21, sip_code=403)
    assert (declined.outcome, declined.retryable, declined.trunk_problem) == ("rejected", False, False)
    assert (refused.outcome, refused.retryable, refused.trunk_problem) == ("failed", True, True)


def test_answered_calls_are_never_trunk_problems() -> None:
    got = classify(answered=True, played=True, cause=16, sip_code=None)
    assert got.delivered and not got.trunk_problem


def test_trunk_problem_note_names_the_sip_status() -> None:
    assert trunk_problem_note(403) == ("the trunk refused the call: SIP 403 Forbidden"
                                       " (credentials, credit or account)")
    assert trunk_problem_note(407).startswith("the trunk refused the call: SIP 407")
    assert trunk_problem_note(500) == "the trunk failed the call: SIP 500 Server Internal Error"
    assert trunk_problem_note(599) == "the trunk failed the call: SIP 599"
