"""Instruction parsing and address normalisation."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from hub.addresses import normalize_email, normalize_phone
from hub.config import Settings
from hub.errors import TooLarge, Unprocessable
from hub.instruction import parse_instruction, parse_intervals

S = Settings()


def parse(body: dict[str, Any], **kw: Any) -> Any:
    return parse_instruction(body, S, **kw)


def test_intervals_in_minutes_with_decimals() -> None:
    assert parse_intervals("60") == [3600.0]
    assert parse_intervals("0.1, 15,60") == [6.0, 900.0, 3600.0]
    assert parse_intervals(5) == [300.0]
    for bad in ("", "a", "-1", "1,,2", "nan"):
        with pytest.raises(ValueError):
            parse_intervals(bad)


def test_duplicates_collapse_after_normalisation() -> None:
    v = parse({"transport": {"type": "email", "subject": "s", "message": "m"},
               "audience": ["A@Example.COM", "a@example.com", "Ann <a@example.com>", "b@x.io"]})
    assert v.addresses == ["a@example.com", "b@x.io"] and v.duplicates_removed == 2


def test_phone_numbers_normalise_to_e164_with_default_region() -> None:
    assert normalize_phone("+977 981-2345678") == "+9779812345678"
    assert normalize_phone("009779812345678") == "+9779812345678"
    assert normalize_phone("9812345678", "NP") == "+9779812345678"
    for bad in ("12345", "+1 555", "hello", "9812345678"):
        with pytest.raises(ValueError):
            normalize_phone(bad)


def test_voice_needs_audio_or_text_and_phone_numbers() -> None:
    with pytest.raises(Unprocessable) as exc:
        parse({"transport": {"type": "voice"}, "audience": ["+9779812345678", "x"]})
    locs = [d["loc"] for d in exc.value.details]
    assert locs == [["transport", "message"], ["audience", 1]]


def test_scheduled_timestamp_without_offset_is_utc() -> None:
    v = parse({"transport": {"type": "email", "subject": "s", "message": "m"},
               "audience": ["a@b.io"],
               "options": {"trigger": "scheduled", "scheduledTimestamp": "2030-01-02T03:04:05"}})
    assert v.instruction.options.scheduled_timestamp == datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_unusual_but_valid_email_goes_through_the_full_validator() -> None:
    assert normalize_email("user+tag@sub.example.co.uk") == "user+tag@sub.example.co.uk"
    assert normalize_email("josé@bücher.example") == "josé@bücher.example"
    with pytest.raises(ValueError):
        normalize_email("a@@b")


def test_audience_limit_is_413() -> None:
    s = Settings(audience_max=2)
    with pytest.raises(TooLarge):
        parse_instruction({"transport": {"type": "email"}, "audience": ["a", "b", "c"]}, s)


def test_invalid_addresses_reported_up_to_a_cap() -> None:
    with pytest.raises(Unprocessable) as exc:
        parse({"transport": {"type": "email", "subject": "s", "message": "m"},
               "audience": [f"bad{i}" for i in range(5000)]})
    details = exc.value.details
    assert len(details) == 1001
    assert details[-1] == {"loc": ["audience"], "msg": "4000 more invalid addresses not listed"}


def _locs(body: Any) -> list[Any]:
    with pytest.raises(Unprocessable) as exc:
        parse(body)
    return [d["loc"] for d in exc.value.details]


def test_a_bad_option_does_not_hide_a_bad_address() -> None:
    assert _locs({"transport": {"type": "email", "subject": "s", "message": "m"},
                  "audience": ["a@b.io", "nope"], "options": {"retries": -1}}) == [
        ["audience", 1], ["options", "retries"]]


def test_every_part_is_checked_on_its_own() -> None:
    locs = _locs({"transport": {"type": "sms", "subject": 5, "extras": []},
                  "audience": ["+9779812345678", 7, "12"],
                  "options": {"trigger": "later", "webhookUrl": "ftp://x", "colour": "blue"},
                  "xref": "x" * 300, "extra": 1})
    assert locs == [
        ["extra"],
        ["transport", "subject"], ["transport", "extras"],  # schema errors of the transport
        ["audience", 1], ["audience", 2],  # not a string; not a phone number (sms rules)
        ["options", "trigger"], ["options", "colour"],
        ["xref"],
    ]


def test_content_checks_and_option_checks_together() -> None:
    locs = _locs({"transport": {"type": "email", "message": "m"}, "audience": ["a@b.io"],
                  "options": {"trigger": "scheduled", "webhookUrl": "ftp://example.com"}})
    assert locs == [["transport", "subject"], ["options", "scheduledTimestamp"],
                    ["options", "webhookUrl"]]


def test_an_unknown_transport_type_still_reports_options_and_a_missing_audience() -> None:
    assert _locs({"transport": {"type": "fax"}, "options": {"retries": "many"}}) == [
        ["transport", "type"], ["audience"], ["options", "retries"]]
    assert _locs([1, 2]) == [[]]
