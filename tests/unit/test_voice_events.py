"""Which ARI events the controller keeps: every kind `Controller._handle` acts on is asked
of Asterisk and kept, and the rest (other variables, channel state changes, the kinds it
never reads) take no place in a channel's chain."""

from __future__ import annotations

import inspect
import re
from typing import Any

from hub.voice.calls import HANGUP_VAR
from hub.voice.controller import (
    HANDLED_EVENTS,
    WITHOUT_VARSET,
    Controller,
    _acted_on,
    _carries_hangup_var,
)


def event(kind: str, **extra: Any) -> dict[str, Any]:
    return {"type": kind, "channel": {"id": "hub-x", "state": "Ringing"}, **extra}


def test_every_kind_the_handler_reads_is_asked_for() -> None:
    read = set(re.findall(r'kind == "(\w+)"', inspect.getsource(Controller._handle)))
    assert read and read == HANDLED_EVENTS


def test_kept_and_dropped() -> None:
    kept = [event("StasisStart", args=["outbound"]), event("ChannelDtmfReceived", digit="1"),
            event("ChannelDestroyed", cause=16),
            {"type": "PlaybackFinished", "playback": {"id": "p", "target_uri": "channel:hub-x"}},
            event("ChannelVarset", variable=HANGUP_VAR, value="operator")]
    dropped = [event("ChannelVarset", variable="RTPAUDIOQOS", value="x"),
               event("ChannelStateChange"),
               {"type": "ChannelStateChange", "channel": {"id": "hub-x", "state": "Up"}},
               event("Dial"), event("ChannelDialplan"),
               event("StasisEnd"), event("ChannelHangupRequest"),
               {"type": "PlaybackStarted", "playback": {"id": "p", "target_uri": "channel:hub-x"}}]
    assert [_acted_on(e) for e in kept] == [True] * len(kept)
    assert [_acted_on(e) for e in dropped] == [False] * len(dropped)


def test_channelvarset_is_dropped_only_when_channels_carry_the_hangup_mark() -> None:
    """With ari.conf `channelvars = HUB_HANGUP_BY` every channel snapshot lists it (empty
    until set) and ChannelDestroyed tells the mark; without it, ChannelVarset must stay."""
    assert HANDLED_EVENTS - WITHOUT_VARSET == {"ChannelVarset"}
    carried = {"type": "StasisStart",
               "channel": {"id": "hub-x", "state": "Up", "channelvars": {HANGUP_VAR: ""}}}
    assert _carries_hangup_var(carried)
    assert not _carries_hangup_var(event("ChannelStateChange"))  # no channelvars configured
    assert not _carries_hangup_var({"type": "ChannelStateChange", "channel": {
        "id": "hub-x", "channelvars": {"OTHER": "1"}}})
    assert not _carries_hangup_var({"type": "PlaybackFinished", "playback": {"id": "p"}})
