"""One call's state, driven by ARI events. Handlers are short; each returns nothing and
moves the call on (play, menu, hang up); the controller records the result when the
channel is destroyed."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from hub.constants import D_CANCELLED, D_DELIVERED
from hub.retry import Decision
from hub.store.claims import Claimed
from hub.transports.base import Result
from hub.voice.audio import Media
from hub.voice.menu import Menu
from hub.voice.outcomes import cause_text, classify, trunk_problem_note
from hub.voice.trunks import Amd, VoiceConfig

CHANNEL_PREFIX = "hub-"
MAIN_PLAYBACK = "main"
# `hub calls hangup` sets it on the channel ("operator", or "operator-retry" for --retry)
# before ending the call; the controller reads it from ChannelDestroyed (ari.conf
# `channelvars`), or from the ChannelVarset event where Asterisk is not configured so.
HANGUP_VAR = "HUB_HANGUP_BY"
OPERATOR_NOTE = "hung up by the operator"


def channel_id(attempt_id: str) -> str:
    return CHANNEL_PREFIX + attempt_id


def attempt_of(channel: str) -> str | None:
    if not channel.startswith(CHANNEL_PREFIX):
        return None
    try:
        return str(uuid.UUID(channel[len(CHANNEL_PREFIX):]))
    except ValueError:
        return None


@dataclass
class SessionInfo:
    """What a call needs of its session (loaded once per session by the controller)."""

    id: uuid.UUID
    app_id: uuid.UUID
    retries: int
    intervals_s: list[float]
    media: Media
    menu: Menu | None
    prompts: dict[str, Media] = field(default_factory=dict)
    amd: Amd | None = None  # the session's override of the trunk's AMD setting


@dataclass
class Call:
    claimed: Claimed
    session: SessionInfo
    trunk_id: uuid.UUID
    config: VoiceConfig
    channel: str
    started: float = field(default_factory=time.monotonic)
    up: float | None = None
    ended: float | None = None
    played: bool = False
    machine: bool = False
    dtmf: str = ""
    menu: Menu | None = None          # the menu waiting for a digit, if any
    menu_deadline: float | None = None
    playing: str | None = None        # id of the playback in progress
    after_playback: str = "hangup"    # hangup | menu | digit
    note: str | None = None           # why the hub ended or lost the call
    originating: bool = False         # the originate request has not been answered yet
    hangup_by: str | None = None      # HANGUP_VAR's value: the operator ended the call

    @property
    def answered(self) -> bool:
        return self.up is not None

    @property
    def amd(self) -> Amd:
        return self.session.amd or self.config.amd

    def playback_id(self, what: str) -> str:
        return f"{self.channel}.{what}.{len(self.dtmf)}"

    def result(self, cause: int | None, sip_code: int | None) -> Result:
        end = self.ended or time.monotonic()
        ring = (self.up or end) - self.started
        talk = end - self.up if self.up is not None else 0.0
        verdict = classify(answered=self.answered, played=self.played, cause=cause,
                           sip_code=sip_code, machine=self.machine,
                           play_to_machines=self.amd.on_machine == "play")
        info: dict[str, Any] = {
            "cause": cause, "causeText": cause_text(cause), "sipCode": sip_code,
            "ringS": round(ring, 2), "talkS": round(talk, 2), "dtmf": self.dtmf,
            "played": self.played,
        }
        if self.machine:
            info["amd"] = "MACHINE"
        if verdict.trunk_problem:
            info["trunkProblem"] = True
        if self.hangup_by:
            info["hangupBy"] = "operator"
        error = None if verdict.delivered else self.note or (
            OPERATOR_NOTE if self.hangup_by else None) or (
            trunk_problem_note(sip_code) if verdict.trunk_problem and sip_code
            else _why(verdict.outcome, cause, sip_code))
        return Result(verdict.outcome, delivered=verdict.delivered, retryable=verdict.retryable,
                      provider_ref=self.channel, detail=info, error=error)


def operator_decision(hangup_by: str | None, result: Result, decision: Decision) -> Decision:
    """An operator's hang-up (`hub calls hangup`) gives the recipient no further attempt:
    `delivered` if the audio had played to its end, else `cancelled`; with --retry
    ("operator-retry") the retry policy decides as usual."""
    if hangup_by != "operator":
        return decision
    return Decision(D_DELIVERED) if result.delivered else Decision(D_CANCELLED)


def _why(outcome: str, cause: int | None, sip_code: int | None) -> str:
    if outcome == "answered":
        return "the callee hung up before the audio ended"
    sip = f", SIP {sip_code}" if sip_code else ""
    return f"{outcome.replace('_', ' ')} (cause {cause} {cause_text(cause)}{sip})"


def now_utc() -> datetime:
    return datetime.now(UTC)
