"""Calling windows (DESIGN §8.2): open in every time zone of the recipient's number, across
midnight and daylight-saving changes; a number with no known zone follows the trunk's
`timeZone`; a window that cannot be right is refused at registration."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from hub.transports.voice import VOICE
from hub.voice.trunks import CallingWindow, VoiceConfig, next_window_start

NIGHT = CallingWindow(start="22:00", end="06:00")
DAY = CallingWindow(start="09:00", end="20:00")
NEW_YORK, TOKYO = "+12125550100", ZoneInfo("Asia/Tokyo")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def test_a_window_that_wraps_midnight() -> None:
    # New York in May is UTC-4: 22:00 local is 02:00 UTC, 06:00 local is 10:00 UTC.
    assert next_window_start(NEW_YORK, NIGHT, utc(2026, 5, 4, 3, 0)) is None    # 23:00
    assert next_window_start(NEW_YORK, NIGHT, utc(2026, 5, 4, 9, 59)) is None   # 05:59
    opens = next_window_start(NEW_YORK, NIGHT, utc(2026, 5, 4, 10, 0))          # 06:00
    assert opens == utc(2026, 5, 5, 2, 0)  # 22:00 the same local day
    assert next_window_start(NEW_YORK, NIGHT, utc(2026, 5, 5, 1, 0)) == utc(2026, 5, 5, 2, 0)


def test_the_opening_is_wall_clock_time_across_daylight_saving() -> None:
    # 2026-03-08: New York moves from UTC-5 to UTC-4.
    assert next_window_start(NEW_YORK, DAY, utc(2026, 3, 7, 2, 0)) == utc(2026, 3, 7, 14, 0)
    assert next_window_start(NEW_YORK, DAY, utc(2026, 3, 8, 3, 0)) == utc(2026, 3, 8, 13, 0)
    # a night window that spans the change: opens 22:00 EST, closes 06:00 EDT (10:00 UTC)
    assert next_window_start(NEW_YORK, NIGHT, utc(2026, 3, 8, 9, 30)) is None
    assert next_window_start(NEW_YORK, NIGHT, utc(2026, 3, 8, 10, 0)) == utc(2026, 3, 9, 2, 0)


def test_a_number_spanning_zones_is_called_only_when_open_in_all() -> None:
    # A Russian mobile number may be anywhere from Europe/Bucharest (UTC+3 in summer) to
    # Kamchatka (UTC+12): 09:00-20:00 everywhere is 06:00-08:00 UTC.
    mobile = "+79161234567"
    assert next_window_start(mobile, DAY, utc(2026, 7, 1, 7, 0)) is None
    assert next_window_start(mobile, DAY, utc(2026, 7, 1, 12, 0)) == utc(2026, 7, 2, 6, 0)
    assert next_window_start(mobile, DAY, utc(2026, 7, 1, 8, 0)) == utc(2026, 7, 2, 6, 0)
    # Alaska (Anchorage UTC-8, Adak UTC-9 in summer): Adak opens last, Anchorage closes first
    alaska = "+19075550100"
    assert next_window_start(alaska, DAY, utc(2026, 7, 1, 17, 30)) == utc(2026, 7, 1, 18, 0)
    assert next_window_start(alaska, DAY, utc(2026, 7, 2, 3, 59)) is None
    assert next_window_start(alaska, DAY, utc(2026, 7, 2, 4, 0)) == utc(2026, 7, 2, 18, 0)


def test_zones_from_plus_12_to_minus_11_with_no_common_hour_use_the_trunks_zone() -> None:
    # +1 800 may ring from Guam (UTC+10) to Pago Pago (UTC-11) and St John's (UTC-2:30):
    # no hour is 09:00-20:00 in all of them, so the trunk's own zone decides.
    toll_free = "+18005551234"
    assert next_window_start(toll_free, DAY, utc(2026, 7, 1, 3, 0), TOKYO) is None  # 12:00
    assert next_window_start(toll_free, DAY, utc(2026, 7, 1, 12, 0), TOKYO) == utc(2026, 7, 2, 0, 0)


def test_a_number_with_no_known_zone_uses_the_trunks_zone() -> None:
    unknown = "+15555550100"  # Etc/Unknown in the numbering plan
    assert next_window_start(unknown, DAY, utc(2026, 7, 1, 3, 0), TOKYO) is None  # 12:00 Tokyo
    assert next_window_start(unknown, DAY, utc(2026, 7, 1, 12, 0), TOKYO) == utc(2026, 7, 2, 0, 0)
    # with no zone at all (a trunk stored before `timeZone` existed): UTC, never "any time"
    assert next_window_start(unknown, DAY, utc(2026, 7, 1, 22, 0)) == utc(2026, 7, 2, 9, 0)
    assert next_window_start("not a number", DAY, utc(2026, 7, 1, 22, 0)) == utc(2026, 7, 2, 9, 0)


def test_the_trunk_config_knows_its_zone() -> None:
    cfg = VoiceConfig.model_validate({"trunk": "t", "timeZone": "Asia/Tokyo",
                                      "callingWindow": {"start": "09:00", "end": "20:00"}})
    assert cfg.zone == TOKYO
    assert cfg.window_opens("+15555550100", utc(2026, 7, 1, 12, 0)) == utc(2026, 7, 2, 0, 0)
    assert VoiceConfig(trunk="t").window_opens("+15555550100", utc(2026, 7, 1, 22, 0)) is None


def _problems(config: dict[str, Any]) -> list[tuple[Any, ...]]:
    with pytest.raises(ValidationError) as caught:
        VOICE.config_model.model_validate(config)
    return [e["loc"] for e in caught.value.errors()]


@pytest.mark.parametrize(("config", "loc"), [
    ({"callingWindow": {"start": "09:00", "end": "20:00"}}, ("timeZone",)),
    ({"callingWindow": {"start": "09:00", "end": "09:00"}, "timeZone": "UTC"},
     ("callingWindow", "end")),
    ({"callingWindow": {"start": "9:00", "end": "20:00"}, "timeZone": "UTC"},
     ("callingWindow", "start")),
    ({"callingWindow": {"start": "09:00", "end": "24:00"}, "timeZone": "UTC"},
     ("callingWindow", "end")),
    ({"callingWindow": {"start": "09:00", "end": "20:00"}, "timeZone": "Mars/Olympus"},
     ("timeZone",)),
    ({"timeZone": "../../etc/passwd"}, ("timeZone",)),
])
def test_windows_that_cannot_be_right_are_refused_where_they_are_wrong(
        config: dict[str, Any], loc: tuple[Any, ...]) -> None:
    assert _problems({"trunk": "t", **config}) == [loc]


def test_good_windows_register() -> None:
    for window in ({"start": "22:00", "end": "06:00"}, {"start": "00:00", "end": "23:59"}):
        cfg = VOICE.config_model.model_validate(
            {"trunk": "t", "callingWindow": window, "timeZone": "America/New_York"})
        assert cfg.model_dump(by_alias=True, exclude_none=True)["timeZone"] == "America/New_York"
    VOICE.config_model.model_validate({"trunk": "t", "timeZone": "Asia/Kathmandu"})
