"""Voice transports are trunks: their registered config, dialled-number rules, pacing
(exact calls per second and a channel cap) and the calling window."""

from __future__ import annotations

import asyncio
import re
import time
from datetime import datetime, timedelta
from datetime import time as dtime
from typing import Literal
from zoneinfo import ZoneInfo

import phonenumbers
from phonenumbers import timezone as pn_timezone
from pydantic import BaseModel, ConfigDict, Field, field_validator


class PrefixRule(BaseModel):
    """Rewrite the dialled number: strip `strip` (a literal prefix) and prepend `add`."""

    model_config = ConfigDict(extra="forbid")

    strip: str = ""
    add: str = ""


class CallingWindow(BaseModel):
    model_config = ConfigDict(extra="forbid")

    start: str = "09:00"
    end: str = "20:00"

    @field_validator("start", "end")
    @classmethod
    def _hhmm(cls, v: str) -> str:
        if not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", v):
            raise ValueError("HH:MM expected")
        return v


class Amd(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    on_machine: Literal["hangup", "play"] = Field(default="hangup", alias="onMachine")


class VoiceConfig(BaseModel):
    """Registration config of a voice transport (one SIP trunk)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    trunk: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    caller_id: str | None = Field(default=None, alias="callerId")
    dial_prefix: list[PrefixRule] = Field(default_factory=list, alias="dialPrefix")
    max_channels: int = Field(default=30, ge=1, le=5000, alias="maxChannels")
    cps: float = Field(default=5.0, gt=0, le=500)
    ring_timeout_s: int = Field(default=30, ge=5, le=300, alias="ringTimeoutS")
    calling_window: CallingWindow | None = Field(default=None, alias="callingWindow")
    amd: Amd = Field(default_factory=Amd)
    default_region: str | None = Field(default=None, alias="defaultRegion")

    def dialled(self, e164: str) -> str:
        """The number as the trunk wants it: the first rule whose prefix matches applies."""
        for rule in self.dial_prefix:
            if e164.startswith(rule.strip):
                return rule.add + e164[len(rule.strip):]
        return e164


class Pacer:
    """Spaces call starts exactly 1/cps apart (no bursts), across all callers."""

    def __init__(self, cps: float) -> None:
        self.interval_s = 1.0 / cps
        self._next = time.monotonic()
        self._lock = asyncio.Lock()

    async def wait(self) -> None:
        async with self._lock:
            now = time.monotonic()
            if self._next > now:
                await asyncio.sleep(self._next - now)
                now = self._next
            self._next = max(now, self._next) + self.interval_s


def local_zone(e164: str) -> ZoneInfo | None:
    """The recipient's time zone from the number, when the numbering plan says one."""
    try:
        zones = pn_timezone.time_zones_for_number(phonenumbers.parse(e164))
    except phonenumbers.NumberParseException:
        return None
    usable = [z for z in zones if z != "Etc/Unknown"]
    return ZoneInfo(usable[0]) if usable else None


def next_window_start(e164: str, window: CallingWindow, now: datetime) -> datetime | None:
    """None when calling is allowed now; else when the recipient's window next opens."""
    zone = local_zone(e164)
    if zone is None:
        return None
    local = now.astimezone(zone)
    start, end = (dtime.fromisoformat(window.start), dtime.fromisoformat(window.end))
    if start <= local.time() < end:
        return None
    opens = local.replace(hour=start.hour, minute=start.minute, second=0, microsecond=0)
    if local.time() >= end:
        opens += timedelta(days=1)  # wall-clock arithmetic in the recipient's zone
    return opens


def amd_override(extras: dict[str, object]) -> Amd | None:
    """A session's `extras.amd`: true/false, or {"enabled", "onMachine"}; None to keep the
    trunk's setting."""
    raw = extras.get("amd")
    if raw is None:
        return None
    if isinstance(raw, bool):
        return Amd(enabled=raw)
    return Amd.model_validate(raw)
