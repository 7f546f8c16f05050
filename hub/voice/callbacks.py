"""The FastAGI routes of `hub voice` (DESIGN §8.5).

`callback`: someone calls the trunk number back. The hub finds the latest voice message
sent to the caller's number by a session dialling through that trunk (one whose call
reached the callee first), plays it again, offers "press 9 to stop these calls" (9 puts
the number on that app's do-not-contact list for voice), and records the callback: a row
in `callbacks` and an entry in the delivery's `detail.callbacks`. Unknown callers hear the
fallback (HUB_CALLBACK_FALLBACK, or a short spoken message) and are recorded without app.

`lookup`: sets HUB_LAST_SESSION, HUB_LAST_STATUS (the delivery's status), HUB_SUPPRESSED
(1/0) and HUB_APP on the channel for the caller (or the number in the first argument; a
trunk name in the second when the channel is not a trunk's), so an operator's own
dialplan can branch on them.
"""

from __future__ import annotations

import logging
import re
import time
import uuid

import asyncpg

from hub.config import Settings
from hub.store import callbacks as store
from hub.store import suppressions
from hub.store.db import DATABASE_TROUBLE
from hub.voice.agi import Agi, AgiServer, Route
from hub.voice.audio import AudioError, AudioStore, Media

log = logging.getLogger(__name__)

STOP_DIGIT = "9"
PROMPT_TEXT = "To stop these calls, press 9."
CONFIRM_TEXT = "You will not receive these calls again. Goodbye."
FALLBACK_TEXT = "Thank you for calling. We have no message for this number. Goodbye."
CORE_GOODBYE = "vm-goodbye"  # an Asterisk core sound, if speech cannot be synthesised
PROMPT_WAIT_MS = 5000
SAMPLE_RATE = 8000  # STREAM FILE's endpos counts samples of 8 kHz audio
PLAY_GRACE_S = 60.0


def caller_numbers(raw: str) -> tuple[str, list[str]]:
    """The caller's number in E.164 (as deliveries store it) and the forms to look up;
    ('', []) when it is no number (anonymous, unknown)."""
    number = re.sub(r"[\s().-]", "", raw)
    if number.startswith("00"):
        number = "+" + number[2:]
    if not re.fullmatch(r"\+?\d{3,17}", number):
        return "", []
    e164 = number if number.startswith("+") else "+" + number
    return e164, [e164, e164[1:]]


def endpoint_of(channel: str) -> str | None:
    """`PJSIP/trunk-0000002a` -> `trunk`; None for a channel that is no PJSIP endpoint's."""
    tech, _, name = channel.partition("/")
    if tech.upper() != "PJSIP" or "-" not in name:
        return None
    return name.rsplit("-", 1)[0] or None


class Callbacks:
    def __init__(self, settings: Settings, pool: asyncpg.Pool, audio: AudioStore) -> None:
        self.pool = pool
        self.audio = audio
        self.fallback = settings.callback_fallback or CORE_GOODBYE
        self.speak_fallback = not settings.callback_fallback
        self.prompt = CORE_GOODBYE
        self.confirm = CORE_GOODBYE

    async def prepare(self) -> None:
        """Synthesise the spoken prompts once (cached by content in the media folder)."""
        try:
            self.prompt = (await self.audio.prepare(None, PROMPT_TEXT)).path
            self.confirm = (await self.audio.prepare(None, CONFIRM_TEXT)).path
            if self.speak_fallback:
                self.fallback = (await self.audio.prepare(None, FALLBACK_TEXT)).path
        except AudioError as exc:
            log.warning("agi: callback prompts not synthesised (%s); using %s", exc,
                        CORE_GOODBYE)

    def routes(self) -> dict[str, Route]:
        return {"callback": self.callback, "lookup": self.lookup}

    async def callback(self, agi: Agi) -> None:
        channel = agi.headers.get("agi_channel", "")
        raw = agi.headers.get("agi_callerid", "")
        caller, forms = caller_numbers(raw)
        trunk = endpoint_of(channel)
        found = None
        try:
            async with self.pool.acquire() as conn:
                if forms and trunk:
                    found = await store.latest(conn, forms, trunk, reached_first=True)
                callback_id = await store.start(conn, caller=caller or raw or "unknown",
                                                trunk=trunk, channel=channel or None,
                                                found=found)
        except DATABASE_TROUBLE:
            log.exception("agi: callback from %s: database unavailable; fallback played",
                          caller or raw)
            await agi.answer()
            await agi.stream_file(self.fallback)  # never silence; nothing to record it in
            return
        log.info("agi: callback from %s on %s: %s", caller or raw, trunk,
                 f"delivery {found.delivery_id}" if found else "unknown caller")
        heard = Heard()
        try:
            await agi.answer()
            if found is None or not found.media_name:
                await heard.play(agi, self.fallback, "", PLAY_GRACE_S)
                return
            path = Media(found.media_name, found.media_duration_s).path
            await heard.play(agi, path, STOP_DIGIT, found.media_duration_s + PLAY_GRACE_S)
            if STOP_DIGIT not in heard.digits:
                heard.digits += await agi.get_data(self.prompt, PROMPT_WAIT_MS, 1)
            if STOP_DIGIT in heard.digits:
                heard.suppressed = await self._suppress(found.app_id, found.address)
                await agi.stream_file(self.confirm)
        finally:
            await self._finish(callback_id, heard)

    async def _suppress(self, app_id: uuid.UUID, address: str) -> bool:
        try:
            async with self.pool.acquire() as conn:
                await suppressions.add_one(conn, app_id, address, "voice",
                                           "pressed 9 on a callback")
        except DATABASE_TROUBLE:
            log.exception("agi: adding %s to the do-not-contact list failed", address)
            return False
        log.info("agi: %s asked to stop these calls", address)
        return True

    async def _finish(self, callback_id: int, heard: Heard) -> None:
        try:
            async with self.pool.acquire() as conn:
                await store.finish(conn, callback_id, listened_s=heard.listened_s(),
                                   digits=heard.digits, suppressed=heard.suppressed)
        except DATABASE_TROUBLE:
            log.exception("agi: recording callback %s failed", callback_id)

    async def lookup(self, agi: Agi) -> None:
        args = agi.args
        channel = agi.headers.get("agi_channel", "")
        caller, forms = caller_numbers(args[0] if args and args[0]
                                       else agi.headers.get("agi_callerid", ""))
        trunk = endpoint_of(channel) or (args[1] if len(args) > 1 else None)
        found = None
        if forms and trunk:
            async with self.pool.acquire() as conn:
                found = await store.latest(conn, forms, trunk, reached_first=False)
        await agi.set_variable("HUB_LAST_SESSION", str(found.session_id) if found else "")
        await agi.set_variable("HUB_LAST_STATUS", found.status if found else "")
        await agi.set_variable("HUB_SUPPRESSED", "1" if found and found.suppressed else "0")
        await agi.set_variable("HUB_APP", str(found.app_id) if found else "")
        log.info("agi: lookup %s on %s: %s", caller or "?", trunk,
                 found.session_id if found else "nothing")


class Heard:
    """What the caller heard and pressed."""

    def __init__(self) -> None:
        self.digits = ""
        self.suppressed = False
        self.seconds = 0.0
        self.playing_since: float | None = None
        self.playing_max_s = 0.0

    async def play(self, agi: Agi, name: str, escape: str, timeout_s: float) -> None:
        self.playing_since, self.playing_max_s = time.monotonic(), timeout_s
        digit, endpos = await agi.stream_file(name, escape, timeout_s)
        self.playing_since = None
        self.seconds += endpos / SAMPLE_RATE
        self.digits += digit

    def listened_s(self) -> float:
        """Seconds of the message heard; a playback cut by a hang-up counts until then."""
        if self.playing_since is not None:
            return self.seconds + min(time.monotonic() - self.playing_since, self.playing_max_s)
        return self.seconds


async def start_agi(settings: Settings, pool: asyncpg.Pool, audio: AudioStore
                    ) -> AgiServer | None:
    """The FastAGI server on HUB_AGI_HOST:HUB_AGI_PORT (None when the port is 0, or when it
    cannot listen: outbound calls go on, and the error says why)."""
    if not settings.agi_port:
        return None
    callbacks = Callbacks(settings, pool, audio)
    await callbacks.prepare()
    server = AgiServer(callbacks.routes(), settings.agi_max_calls)
    try:
        await server.start(settings.agi_host, settings.agi_port)
    except OSError as exc:
        log.error("agi: cannot listen on %s:%s (%s); no inbound callbacks here",
                  settings.agi_host, settings.agi_port, exc)
        return None
    log.info("agi: FastAGI on %s:%s", settings.agi_host, server.port)
    return server
