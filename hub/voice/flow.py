"""What happens on an answered call, driven by its ARI events: play the message (or not,
for a machine), run the DTMF menu, opt the callee out, hang up. The controller records
the call when it ends; this module only moves it along."""

from __future__ import annotations

import logging
import time
from typing import Any

import asyncpg

from hub.store import suppressions
from hub.voice.ari import Ari, AriError
from hub.voice.audio import Media
from hub.voice.calls import MAIN_PLAYBACK, Call
from hub.voice.menu import WAIT, Step, after_playback, choose, enter

log = logging.getLogger(__name__)
STEP_VARIABLE = "HUB_STEP"  # channel variable: where the call is (adoption resumes there)
AMD_FIRST = "amd-first"     # a call with AMD enters Stasis with this first, answered ...
AMD_CONTEXT = "hub-amd"     # ... and goes through AMD() in this context, then comes back
MENU_STEP = "menu"


class CallFlow:
    def __init__(self, ari: Ari, pool: asyncpg.Pool) -> None:
        self.ari = ari
        self.pool = pool

    async def stasis_start(self, call: Call | None, channel: dict[str, Any],
                            args: list[str]) -> None:
        if call is None:
            return  # not ours (or already recorded): leave it to its owner
        if args[:1] == [AMD_FIRST]:
            try:
                await self.ari.continue_in_dialplan(call.channel, AMD_CONTEXT)
            except AriError as exc:  # gone already: its end is recorded as usual
                log.info("voice: %s could not go to AMD: %s", call.channel, exc)
            return
        if args[:1] == ["amd"] and len(args) > 1 and args[1] == "MACHINE":
            call.machine = True
            if call.amd.on_machine == "hangup":
                call.note = "answering machine detected; hung up"
                await self.hangup(call)
                return
        await self._play(call, call.session.media, MAIN_PLAYBACK)

    async def resume_playback(self, call: Call) -> None:
        """An adopted call that is up: if it had reached the menu (the channel says so),
        offer the menu again; else follow its main playback, or play it from the start if
        none is running (what it heard while we were away is unknown)."""
        if call.session.menu is not None and await self._step_of(call) == MENU_STEP:
            call.played = True
            await self._step(call, enter(call.session.menu))
            return
        playing = call.playback_id(MAIN_PLAYBACK)
        try:
            await self.ari.request("GET", f"/playbacks/{playing}")
            call.playing = playing
        except AriError:
            await self._play(call, call.session.media, MAIN_PLAYBACK)

    async def _play(self, call: Call, media: Media, what: str) -> None:
        call.playing = call.playback_id(what)
        try:
            await self.ari.play(call.channel, media.uri, call.playing)
        except AriError as exc:
            log.warning("playback on %s failed: %s", call.channel, exc)
            if exc.status != 404:  # 404: the channel is gone already
                await self.hangup(call)

    async def playback_finished(self, call: Call, playback: dict[str, Any]) -> None:
        if playback.get("id") != call.playing:
            return
        call.playing = None
        done = playback.get("state") == "done"
        if ".main." in playback["id"]:
            call.played = done
            if done and call.session.menu is not None:
                await self._step(call, enter(call.session.menu))
                return
        if done:
            await self._step(call, after_playback(call.after_playback, call.menu))
        else:  # failed (the callee hung up, or the audio could not be played): hang up now,
            await self.hangup(call)  # never leave the callee in silence; retried (played false)

    async def dtmf(self, call: Call, digit: str) -> None:
        call.dtmf += digit
        step = None if call.menu is None else choose(call.menu, digit)
        if step is None:
            return
        call.menu, call.menu_deadline = None, None
        if step.opt_out:
            try:
                async with self.pool.acquire() as conn:
                    await suppressions.add_one(conn, call.session.app_id,
                                               call.claimed.recipient.address, "voice",
                                               "opted out by DTMF during a call")
            except Exception:  # the call goes on (the digit is kept in `dtmf`)
                log.exception("voice: recording the opt-out of %s failed", call.channel)
        await self._step(call, step)

    async def _step_of(self, call: Call) -> str | None:
        try:
            got = await self.ari.request("GET", f"/channels/{call.channel}/variable",
                                         variable=STEP_VARIABLE)
        except AriError:
            return None
        return str(got.get("value")) if isinstance(got, dict) else None

    async def _step(self, call: Call, step: Step) -> None:
        """Carry out a menu step: speak its text, or wait for a digit, or hang up."""
        if step.menu is not None:  # remembered on the channel: a controller that adopts
            await self.quietly(self.ari.request(  # the call resumes the menu
                "POST", f"/channels/{call.channel}/variable", variable=STEP_VARIABLE,
                value=MENU_STEP))
        call.menu, call.after_playback, call.menu_deadline = step.menu, step.then, None
        if step.say:
            await self._play(call, call.session.prompts[step.say],
                             "prompt" if step.then == WAIT else "say")
        elif step.then == WAIT and step.menu is not None:
            call.menu_deadline = time.monotonic() + step.menu.timeout_s
        else:
            await self.hangup(call)

    async def hangup(self, call: Call) -> None:
        await self.quietly(self.ari.hangup(call.channel))

    async def quietly(self, coro: Any) -> None:
        try:
            await coro
        except AriError as exc:
            log.info("ARI: %s", exc)
