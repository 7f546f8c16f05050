"""Voice rules that need no Asterisk: outcome mapping, dialled numbers, pacing, windows."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from hub.voice.menu import Menu, menu_problems
from hub.voice.outcomes import classify
from hub.voice.trunks import CallingWindow, VoiceConfig, next_window_start


@pytest.mark.parametrize(("cause", "sip", "outcome", "retry"), [
    (17, 486, "busy", True), (19, 480, "no_answer", True), (1, 404, "invalid_number", False),
    (21, 603, "rejected", False), (34, 503, "congestion", True), (127, None, "failed", True),
    (None, None, "failed", True), (16, 486, "busy", True),
])
def test_unanswered_calls_map_by_cause_and_sip(cause: int | None, sip: int | None,
                                               outcome: str, retry: bool) -> None:
    got = classify(answered=False, played=False, cause=cause, sip_code=sip)
    assert (got.outcome, got.retryable, got.delivered) == (outcome, retry, False)


def test_answered_comes_from_up_not_from_the_cause() -> None:
    assert classify(answered=True, played=True, cause=0, sip_code=None).delivered
    early = classify(answered=True, played=False, cause=16, sip_code=None)
    assert (early.outcome, early.delivered, early.retryable) == ("answered", False, True)
    machine = classify(answered=True, played=True, cause=16, sip_code=None, machine=True)
    assert (machine.outcome, machine.delivered) == ("machine", False)
    assert classify(answered=True, played=True, cause=16, sip_code=None, machine=True,
                    play_to_machines=True).delivered


def test_dial_prefix_rules() -> None:
    cfg = VoiceConfig.model_validate({"trunk": "np", "dialPrefix": [
        {"strip": "+977", "add": "0"}, {"strip": "+", "add": "00"}]})
    assert cfg.dialled("+9779812345678") == "09812345678"
    assert cfg.dialled("+14155550100") == "0014155550100"
    assert VoiceConfig(trunk="t").dialled("+14155550100") == "+14155550100"


def test_trunk_config_is_validated() -> None:
    with pytest.raises(ValidationError):
        VoiceConfig.model_validate({"trunk": "bad name", "cps": 0})
    with pytest.raises(ValidationError):
        VoiceConfig.model_validate({"trunk": "t", "callingWindow": {"start": "9am"}})


def test_calling_window_in_the_recipients_zone() -> None:
    window = CallingWindow(start="09:00", end="20:00")
    # 03:00 UTC is 08:45 in Kathmandu (UTC+5:45): closed, opens at 09:00 local.
    opens = next_window_start("+9779812345678", window, datetime(2026, 5, 4, 3, 0, tzinfo=UTC))
    assert opens is not None and opens.astimezone(UTC) == datetime(2026, 5, 4, 3, 15, tzinfo=UTC)
    assert next_window_start("+9779812345678", window,
                             datetime(2026, 5, 4, 6, 0, tzinfo=UTC)) is None
    late = next_window_start("+9779812345678", window, datetime(2026, 5, 4, 15, 0, tzinfo=UTC))
    assert late is not None and late.astimezone(UTC) == datetime(2026, 5, 5, 3, 15, tzinfo=UTC)


def test_menus_validate_nested_options() -> None:
    menu = Menu.model_validate({"prompt": "Press 1", "options": {
        "1": {"say": "Yes", "menu": {"options": {"2": {"say": "Deeper"}}}}, "9": {"optOut": True}}})
    assert list(menu.texts()) == ["Press 1", "Yes", "Deeper"]
    problems = menu_problems({"menu": {"options": {"12": {"say": "x"}}}})
    assert problems and problems[0]["loc"][:3] == ["transport", "extras", "menu"]
