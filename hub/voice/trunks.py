"""Voice transports are trunks: their registered config, dialled-number rules, pacing
(exact calls per second and a channel cap) and the calling window.

A calling window is wall-clock time where the recipient is: it must be open in every time
zone the numbering plan gives the number (a mobile number of a large country can be in
several), so the call is placed only in the hours they share. A number with no known zone,
or whose zones share no hour of the window, follows the trunk's `timeZone`. Windows may
wrap midnight (`22:00`-`06:00`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from datetime import time as dtime
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from phonenumbers import timezone as pn_timezone
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

UTC_ZONE = ZoneInfo("UTC")
WINDOW_HORIZON_DAYS = 8  # how far ahead a window opening shared by all zones is looked for


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
    def _hhmm(cls, v: str, info: ValidationInfo) -> str:
        if not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", v):
            raise ValueError("HH:MM expected (00:00 to 23:59)")
        if info.field_name == "end" and v == info.data.get("start"):
            raise ValueError("end must differ from start (the window would never open)")
        return v

    def is_open(self, local: dtime) -> bool:
        """Whether a local wall-clock time is inside the window (which may wrap midnight)."""
        start, end = dtime.fromisoformat(self.start), dtime.fromisoformat(self.end)
        if start < end:
            return start <= local < end
        return local >= start or local < end


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
    time_zone: str | None = Field(default=None, alias="timeZone", max_length=64)
    amd: Amd = Field(default_factory=Amd)
    default_region: str | None = Field(default=None, alias="defaultRegion")

    @field_validator("time_zone")
    @classmethod
    def _iana(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                ZoneInfo(v)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"unknown time zone {v!r}; an IANA name such as"
                                 " 'America/New_York' expected") from None
        return v

    @property
    def zone(self) -> ZoneInfo | None:
        """The trunk's own zone: for numbers with no known zone of their own."""
        return ZoneInfo(self.time_zone) if self.time_zone else None

    def window_opens(self, e164: str, now: datetime) -> datetime | None:
        """None when this trunk may call the number now; else when it may next."""
        if self.calling_window is None:
            return None
        return next_window_start(e164, self.calling_window, now, self.zone)

    def dialled(self, e164: str) -> str:
        """The number as the trunk wants it: the first rule whose prefix matches applies."""
        for rule in self.dial_prefix:
            if e164.startswith(rule.strip):
                return rule.add + e164[len(rule.strip):]
        return e164


class VoiceRegistration(VoiceConfig):
    """A trunk as it is registered or changed: a calling window needs the trunk's
    `timeZone` (trunks stored before it existed still load, and use UTC)."""

    @model_validator(mode="before")
    @classmethod
    def _zone_given(cls, data: Any) -> Any:
        """Check a window's zone even when it is left out (the error is then located
        at `timeZone`)."""
        if isinstance(data, dict) and data.get("callingWindow", data.get("calling_window")) \
                is not None and "timeZone" not in data and "time_zone" not in data:
            return {**data, "timeZone": None}
        return data

    @field_validator("time_zone")
    @classmethod
    def _needed_with_a_window(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is None and info.data.get("calling_window") is not None:
            raise ValueError("required with callingWindow: the zone of numbers whose own"
                             " zone is unknown (an IANA name such as 'Europe/London')")
        return v


def number_zones(e164: str) -> list[ZoneInfo]:
    """Every time zone the numbering plan gives the number (none when it knows none)."""
    try:
        zones = pn_timezone.time_zones_for_number(phonenumbers.parse(e164))
    except phonenumbers.NumberParseException:
        return []
    return [ZoneInfo(z) for z in zones if z != "Etc/Unknown"]


def next_window_start(e164: str, window: CallingWindow, now: datetime,
                      zone: ZoneInfo | None = None) -> datetime | None:
    """None when calling is allowed now; else when the window next opens in all of the
    recipient's zones at once. `zone` (the trunk's; UTC if None) stands for a number with
    no known zone, and for one whose zones never share an hour of the window."""
    for zones in (number_zones(e164), [zone or UTC_ZONE]):
        if not zones:
            continue
        if _open_in_all(zones, window, now):
            return None
        opens = _next_shared_opening(zones, window, now)
        if opens is not None:
            return opens
    return None  # unreachable: a valid window opens in any one zone within a day


def _open_in_all(zones: Sequence[ZoneInfo], window: CallingWindow, at: datetime) -> bool:
    return all(window.is_open(at.astimezone(z).time()) for z in zones)


def _next_shared_opening(zones: Sequence[ZoneInfo], window: CallingWindow,
                         now: datetime) -> datetime | None:
    """The first moment after `now` when the window opens in one zone and is open in all
    (where windows overlap, the overlap starts with the last of them to open)."""
    for opens in sorted(_openings(zones, window, now)):
        if _open_in_all(zones, window, opens):
            return opens
    return None


def _openings(zones: Sequence[ZoneInfo], window: CallingWindow, now: datetime) -> Iterator[datetime]:
    """Each zone's window openings after `now`, in wall-clock time (so across daylight
    saving changes too) over the next WINDOW_HORIZON_DAYS."""
    start = dtime.fromisoformat(window.start)
    for z in zones:
        today = now.astimezone(z).date()
        for days in range(WINDOW_HORIZON_DAYS + 1):
            opens = datetime.combine(today + timedelta(days=days), start, tzinfo=z)
            if opens > now:
                yield opens


def amd_override(extras: dict[str, object]) -> Amd | None:
    """A session's `extras.amd`: true/false, or {"enabled", "onMachine"}; None to keep the
    trunk's setting."""
    raw = extras.get("amd")
    if raw is None:
        return None
    if isinstance(raw, bool):
        return Amd(enabled=raw)
    return Amd.model_validate(raw)
