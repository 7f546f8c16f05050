"""DTMF menus (IVR) from `transport.extras.menu`, nested to any depth:

    {"prompt": "Press 1 to confirm, 9 to stop these calls.", "timeoutS": 6,
     "options": {"1": {"say": "Thank you."},
                 "9": {"say": "You will not be called again.", "optOut": true},
                 "2": {"say": "More options.", "menu": {"options": {...}}}}}

The prompt plays after the main audio; the first digit picks an option, whose `say` is
spoken; `optOut` adds the number to the app's do-not-contact list; `menu` goes deeper:
after the option's `say` (if any) its prompt plays and the caller picks again. An option
with no `menu` hangs up after its `say`.

`enter`, `choose` and `after_playback` are the whole of that logic, as `Step`s the call
flow carries out (hub/voice/flow.py): speak a text, then hang up, enter a menu or wait for
a digit.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from hub.errors import detail

DIGITS = set("0123456789*#")
HANGUP, ENTER, WAIT = "hangup", "menu", "digit"  # what follows a step's text


class MenuOption(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    say: str | None = Field(default=None, max_length=2000)
    opt_out: bool = Field(default=False, alias="optOut")
    menu: Menu | None = None


class Menu(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    prompt: str | None = Field(default=None, max_length=2000)
    timeout_s: float = Field(default=5.0, gt=0, le=60, alias="timeoutS")
    options: dict[str, MenuOption] = Field(min_length=1)

    @field_validator("options")
    @classmethod
    def _digits(cls, v: dict[str, MenuOption]) -> dict[str, MenuOption]:
        bad = [k for k in v if k not in DIGITS]
        if bad:
            raise ValueError(f"option keys must be single DTMF digits (0-9, *, #), not {bad}")
        return v

    def texts(self) -> Iterator[str]:
        """Every text this menu may speak, for preparing the audio up front."""
        if self.prompt:
            yield self.prompt
        for option in self.options.values():
            if option.say:
                yield option.say
            if option.menu:
                yield from option.menu.texts()


def parse_menu(extras: dict[str, Any]) -> Menu | None:
    raw = extras.get("menu")
    return None if raw is None else Menu.model_validate(raw)


def menu_problems(extras: dict[str, Any]) -> list[dict[str, Any]]:
    try:
        parse_menu(extras)
    except ValidationError as exc:
        return [detail(["transport", "extras", "menu", *e["loc"]], e["msg"])
                for e in exc.errors(include_url=False)]
    return []


@dataclass(frozen=True)
class Step:
    """What a call does next: speak `say` (if any), then `then`: HANGUP; ENTER `menu`
    (speak its prompt, then wait); or WAIT in `menu` for a digit."""

    say: str | None
    then: str
    menu: Menu | None = None
    opt_out: bool = False


def enter(menu: Menu) -> Step:
    """Going into a menu: its prompt, then a digit (at once when it has no prompt)."""
    return Step(menu.prompt, WAIT, menu)


def choose(menu: Menu, digit: str) -> Step | None:
    """The caller pressed `digit` in `menu`; None when it is not one of the options."""
    option = menu.options.get(digit)
    if option is None:
        return None
    if option.menu is None:
        return Step(option.say, HANGUP, None, option.opt_out)
    if option.say:
        return Step(option.say, ENTER, option.menu, option.opt_out)
    return replace(enter(option.menu), opt_out=option.opt_out)


def after_playback(then: str, menu: Menu | None) -> Step:
    """A step's text was played to its end: what comes after it."""
    if menu is not None and then == ENTER:
        return enter(menu)
    if menu is not None and then == WAIT:
        return Step(None, WAIT, menu)
    return Step(None, HANGUP)
