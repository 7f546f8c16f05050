"""What a call's end means (DESIGN §4), from its events: whether it reached Up, the Q.850
cause and the SIP status of `ChannelDestroyed`, and whether the audio played to its end.

"Answered" comes from the channel reaching Up, never from the cause: a callee's own
hang-up can end an answered call with cause 0.

The SIP status (`tech_cause`) is read before the cause: Asterisk maps the trunk's own
refusals 401/403/407 (expired credentials, no credit) to cause 21, the same cause as a
callee's 603 Decline. Those, and the 5xx a trunk answers for its own failure, are
`failed` (retried) and flagged `trunk_problem`; only 603 (or cause 21 with no SIP status)
is `rejected`. 502/503/504 stay `congestion`: the trunk could not get onward.
"""

from __future__ import annotations

from dataclasses import dataclass

Q850 = {
    0: "Unknown", 1: "Unallocated number", 3: "No route to destination",
    16: "Normal clearing", 17: "User busy", 18: "No user responding",
    19: "No answer from user", 20: "Subscriber absent", 21: "Call rejected",
    22: "Number changed", 27: "Destination out of order", 28: "Invalid number format",
    31: "Normal, unspecified", 34: "No circuit/channel available",
    38: "Network out of order", 41: "Temporary failure", 42: "Switching equipment congestion",
    44: "Requested channel not available", 58: "Bearer capability not available",
    102: "Recovery on timer expiry", 127: "Interworking, unspecified",
}

BUSY_CAUSES = {17}
NO_ANSWER_CAUSES = {18, 19, 20}
INVALID_CAUSES = {1, 3, 22, 28}
REJECTED_CAUSES = {21}
CONGESTION_CAUSES = {34, 38, 41, 42, 44}
SIP_BUSY = {486, 600}
SIP_NO_ANSWER = {408, 480}
SIP_INVALID = {404, 410, 484, 485}
SIP_REJECTED = {603}
SIP_CONGESTION = {502, 503, 504}
SIP_TRUNK_REFUSED = {401: "Unauthorized", 403: "Forbidden", 407: "Proxy Authentication Required"}
SIP_TRUNK_FAILED = {500: "Server Internal Error", 501: "Not Implemented",
                    505: "Version Not Supported", 513: "Message Too Large",
                    580: "Precondition Failure"}


@dataclass(frozen=True)
class CallOutcome:
    outcome: str
    delivered: bool
    retryable: bool
    trunk_problem: bool = False  # the trunk, not the callee, refused or failed the call


def is_trunk_problem(sip_code: int | None) -> bool:
    """The trunk refused (401/403/407) or failed (5xx other than 502/503/504) the call."""
    code = sip_code or 0
    return code in SIP_TRUNK_REFUSED or (500 <= code < 600 and code not in SIP_CONGESTION)


def trunk_problem_note(sip_code: int) -> str:
    """The attempt's error and the controller's log line for a trunk problem."""
    if sip_code in SIP_TRUNK_REFUSED:
        return (f"the trunk refused the call: SIP {sip_code} {SIP_TRUNK_REFUSED[sip_code]}"
                " (credentials, credit or account)")
    reason = SIP_TRUNK_FAILED.get(sip_code)
    return f"the trunk failed the call: SIP {sip_code}" + (f" {reason}" if reason else "")


def cause_text(cause: int | None) -> str | None:
    return None if cause is None else Q850.get(cause, f"Cause {cause}")


def classify(*, answered: bool, played: bool, cause: int | None, sip_code: int | None,
             machine: bool = False, play_to_machines: bool = False) -> CallOutcome:
    """Map a finished call to its outcome and whether it is worth another attempt."""
    if answered:
        if machine:
            return CallOutcome("machine", delivered=play_to_machines and played, retryable=False)
        if played:
            return CallOutcome("answered", delivered=True, retryable=False)
        return CallOutcome("answered", delivered=False, retryable=True)  # hung up early
    if is_trunk_problem(sip_code):
        return CallOutcome("failed", False, True, trunk_problem=True)
    return _by_sip(sip_code or 0) or _by_cause(cause or 0)


# (outcome, retryable, SIP statuses, Q.850 causes): the first matching row decides.
_RULES = (
    ("busy", True, SIP_BUSY, BUSY_CAUSES),
    ("no_answer", True, SIP_NO_ANSWER, NO_ANSWER_CAUSES),
    ("invalid_number", False, SIP_INVALID, INVALID_CAUSES),
    ("rejected", False, SIP_REJECTED, REJECTED_CAUSES),
    ("congestion", True, SIP_CONGESTION, CONGESTION_CAUSES),
)


def _by_sip(sip: int) -> CallOutcome | None:
    for outcome, retryable, sips, _ in _RULES:
        if sip in sips:
            return CallOutcome(outcome, False, retryable)
    return None


def _by_cause(code: int) -> CallOutcome:
    for outcome, retryable, _, causes in _RULES:
        if code in causes:
            return CallOutcome(outcome, False, retryable)
    return CallOutcome("failed", False, True)
