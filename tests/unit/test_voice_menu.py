"""The DTMF menu's logic: what a caller hears and does next at each step."""

from __future__ import annotations

from hub.voice.menu import (
    ENTER,
    HANGUP,
    WAIT,
    Menu,
    Step,
    after_playback,
    choose,
    enter,
    parse_menu,
)

MENU = Menu.model_validate({"prompt": "Press 1 for more, 9 to stop.", "options": {
    "1": {"say": "More options.", "menu": {"prompt": "Press 2.", "timeoutS": 3,
                                           "options": {"2": {"say": "Done."}}}},
    "3": {"menu": {"options": {"4": {}}}},
    "9": {"say": "You will not be called again.", "optOut": True},
    "#": {"optOut": True},
}})
SUB = MENU.options["1"].menu


def test_entering_a_menu_speaks_its_prompt_then_waits() -> None:
    assert enter(MENU) == Step("Press 1 for more, 9 to stop.", WAIT, MENU)
    quiet = MENU.options["3"].menu
    assert quiet is not None and enter(quiet) == Step(None, WAIT, quiet)


def test_an_option_with_say_and_menu_speaks_then_enters_the_submenu() -> None:
    step = choose(MENU, "1")
    assert step == Step("More options.", ENTER, SUB)
    assert after_playback(step.then, step.menu) == Step("Press 2.", WAIT, SUB)  # its prompt
    assert after_playback(WAIT, SUB) == Step(None, WAIT, SUB)  # then a digit
    done = choose(SUB, "2") if SUB else None
    assert done == Step("Done.", HANGUP)
    assert after_playback(done.then, done.menu) == Step(None, HANGUP)


def test_menu_only_options_say_and_opt_out() -> None:
    assert choose(MENU, "3") == enter(MENU.options["3"].menu)  # type: ignore[arg-type]
    assert choose(MENU, "9") == Step("You will not be called again.", HANGUP, None, True)
    assert choose(MENU, "#") == Step(None, HANGUP, None, True)
    assert choose(MENU, "5") is None


def test_after_playback_without_a_menu_hangs_up() -> None:
    assert after_playback(ENTER, None) == Step(None, HANGUP)
    assert after_playback(WAIT, None) == Step(None, HANGUP)
    assert after_playback(HANGUP, MENU) == Step(None, HANGUP)


def test_parse_menu() -> None:
    assert parse_menu({}) is None
    menu = parse_menu({"menu": {"options": {"1": {"say": "Hi", "menu": {"options": {"2": {}}}}}}})
    assert menu is not None and list(menu.texts()) == ["Hi"]
