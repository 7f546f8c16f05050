"""The DTMF menu as a caller moves through it, on the real `CallFlow` and `Ari` client
against a local stand-in for Asterisk's REST interface (it records every play and
hang-up). The events are given as ARI sends them; the Asterisk test bed checks the rest."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from urllib.parse import parse_qs, urlsplit

import asyncpg
import pytest

from hub.dev.fake_http import HttpSink
from hub.results import Recipient
from hub.store.claims import Claimed
from hub.voice.ari import Ari
from hub.voice.audio import Media
from hub.voice.calls import MAIN_PLAYBACK, Call, SessionInfo
from hub.voice.flow import CallFlow
from hub.voice.menu import Menu
from hub.voice.trunks import VoiceConfig
from tests.helpers import free_port

MENU = {"prompt": "Press 1 for more.", "timeoutS": 4, "options": {
    "1": {"say": "More options.", "menu": {"prompt": "Press 2 to hear it again.", "options": {
        "2": {"say": "Here it is."}}}},
    "3": {"menu": {"prompt": "The quiet menu.", "options": {"4": {}}}},
}}


@pytest.fixture
async def asterisk() -> AsyncIterator[tuple[HttpSink, Ari]]:
    sink = HttpSink()
    await sink.start(free_port())
    ari = Ari(sink.url, "hub", "pw", "hub")
    await ari.start()
    yield sink, ari
    await ari.close()
    await sink.stop()


def _call(menu: Menu) -> Call:
    prompts = {text: Media(f"{i}.wav", 1.0) for i, text in enumerate(menu.texts())}
    session = SessionInfo(uuid.uuid4(), uuid.uuid4(), 0, [], Media("main.wav", 3.0), menu, prompts)
    item = Claimed(Recipient(1, str(uuid.uuid4()), 1, "+15555550100"), 0)
    return Call(item, session, uuid.uuid4(), VoiceConfig(trunk="trunk"), "hub-x")


def _heard(sink: HttpSink, call: Call) -> list[str]:
    """What the callee was played, by text, and a final "hangup"."""
    names = {m.name: text for text, m in call.session.prompts.items()}
    heard = []
    for seen in sink.seen:
        if "/play?" in seen.path:
            name = parse_qs(urlsplit(seen.path).query)["media"][0].rsplit("/", 1)[-1]
            heard.append(names.get(name, name))
        elif seen.path.startswith("/ari/channels/hub-x?"):
            heard.append("hangup")
    return heard


async def _finish(flow: CallFlow, call: Call) -> None:
    assert call.playing is not None
    await flow.playback_finished(call, {"id": call.playing, "state": "done"})


async def test_an_option_with_say_and_menu_plays_the_submenu_prompt(
        asterisk: tuple[HttpSink, Ari], db: asyncpg.Pool) -> None:
    sink, ari = asterisk
    flow, call = CallFlow(ari, db), _call(Menu.model_validate(MENU))
    call.playing = call.playback_id(MAIN_PLAYBACK)
    await _finish(flow, call)                  # the message ends: the menu's prompt
    await _finish(flow, call)                  # the prompt ends: waiting for a digit
    assert call.menu_deadline is not None and call.playing is None
    await flow.dtmf(call, "1")
    await _finish(flow, call)                  # "More options." ends
    assert _heard(sink, call) == ["Press 1 for more.", "More options.",
                                  "Press 2 to hear it again."]
    await _finish(flow, call)
    assert call.menu_deadline is not None      # waiting in the submenu
    await flow.dtmf(call, "2")
    await _finish(flow, call)
    assert _heard(sink, call)[3:] == ["Here it is.", "hangup"]
    assert call.dtmf == "12"


async def test_a_menu_only_option_and_an_empty_option(
        asterisk: tuple[HttpSink, Ari], db: asyncpg.Pool) -> None:
    sink, ari = asterisk
    flow, call = CallFlow(ari, db), _call(Menu.model_validate(MENU))
    call.playing = call.playback_id(MAIN_PLAYBACK)
    await _finish(flow, call)
    await flow.dtmf(call, "7")                 # not an option: ignored
    await flow.dtmf(call, "3")                 # barge in during the prompt
    assert call.playing is not None
    await _finish(flow, call)
    await flow.dtmf(call, "4")                 # an option with nothing to say: hang up
    assert _heard(sink, call) == ["Press 1 for more.", "The quiet menu.", "hangup"]
