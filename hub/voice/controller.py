"""`hub voice`: the ARI controller, the only ARI client.

It starts voice sessions, prepares their audio once, and per trunk claims due deliveries
(lease, SKIP LOCKED), paces originations (exact calls per second, channel cap, calling
window), follows each call through its ARI events (see `calls.py`), and records every
attempt with the shared retry policy. After a lost ARI connection it reconciles: calls
that ended while it was away are recorded, nothing stays `in_progress`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import time
import uuid
from collections.abc import Awaitable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from redis import Redis
from redis.exceptions import RedisError

from hub import constants as c
from hub.aredis import async_redis
from hub.config import Settings
from hub.jobs.queueing import Kicker
from hub.observe import metrics
from hub.retry import decide
from hub.store import claims, deliveries, grants, sessions, suppressions
from hub.store import voice as store
from hub.store.claims import Claimed
from hub.store.db import DATABASE_TROUBLE, create_pool, patiently
from hub.store.deliveries import Outcome
from hub.transports.base import Recipient, Result
from hub.voice import ami
from hub.voice.ari import Ari, AriError
from hub.voice.audio import AudioError, AudioStore, Media
from hub.voice.callbacks import start_agi
from hub.voice.calls import (
    HANGUP_VAR,
    Call,
    SessionInfo,
    attempt_of,
    channel_id,
    now_utc,
    operator_decision,
)
from hub.voice.carrier import RENEW_EVERY_S, Carrier, Limits, LimitsReader, take_turns
from hub.voice.flow import AMD_FIRST, CallFlow
from hub.voice.menu import parse_menu
from hub.voice.outcomes import is_trunk_problem, trunk_problem_note
from hub.voice.recording import CallRecorder
from hub.voice.trunks import VoiceConfig, amd_override

log = logging.getLogger(__name__)
STASIS_APP = "hub"
LOST_NOTE = "the call ended while the controller was away from Asterisk; outcome unknown"
MAX_EXTRA_S = 300  # beyond ring timeout + audio: menus, slow hang-ups
GIVE_BACK_DELAY = timedelta(seconds=2)  # a call not placed is due again after this
RECORD_TRIES = 200  # about 15 minutes of trying while the database is away
RECONCILE_EVERY_S = 60.0
GRANT_CACHE_S = 5.0
ASTERISK_SETTLE_S = 3.0
MAX_CPS_WAIT_S = 5.0
ASTERISK_GONE_S = 5.0
DRAIN_S = 5.0  # stopping: how long ended calls' recordings and releases may still take
SESSION_CACHE_MAX = 256
# The ARI events `_handle` acts on; Asterisk is asked to send only these (`Ari.event_types`).
# Not ChannelStateChange: an originated call enters the app (StasisStart) once answered,
# and ChannelDestroyed's channel state tells an answer that hung up before it got there.
HANDLED_EVENTS = frozenset({"StasisStart", "ChannelDtmfReceived", "ChannelVarset",
                            "ChannelDestroyed", "PlaybackFinished"})
# ... and not ChannelVarset once its channels carry HANGUP_VAR (ari.conf `channelvars`):
# then ChannelDestroyed tells the operator's mark, and a call's seven other variables
# (STASISSTATUS, RTPAUDIOQOS...) are neither sent nor parsed.
WITHOUT_VARSET = HANDLED_EVENTS - {"ChannelVarset"}


def owner_of(settings: Settings) -> str:
    """The controller's name in claims: HUB_VOICE_ID, stable across restarts and container
    recreation so that a new process adopts the calls its predecessor started."""
    return settings.voice_id or f"voice-{socket.gethostname()}"


@dataclass
class Trunk:
    id: uuid.UUID
    name: str
    config: VoiceConfig
    calls: set[str] = field(default_factory=set)
    turn: int = 0  # which of the trunk's sessions is first in line for the next claim
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class Controller:
    def __init__(self, settings: Settings, pool: asyncpg.Pool, ari: Ari, kicker: Kicker,
                 audio: AudioStore, carrier: Carrier) -> None:
        self.settings = settings
        self.pool = pool
        self.ari = ari
        self.kicker = kicker
        self.audio = audio
        self.owner = owner_of(settings)
        self.recorder = CallRecorder(pool, self.owner, settings.base_url, kicker.webhooks,
                                     RECORD_TRIES)
        self.trunks: dict[uuid.UUID, Trunk] = {}
        self.calls: dict[str, Call] = {}
        self.sessions: dict[uuid.UUID, SessionInfo] = {}
        self.stopping = asyncio.Event()
        self.held: set[int] = set()   # deliveries claimed here and not recorded yet
        self.background: set[asyncio.Task[None]] = set()  # give-backs, event filter changes
        self.remotes: dict[str, Ari] = {}  # other controllers' Asterisks, to ask about calls
        self.chains: dict[str, asyncio.Task[None]] = {}  # per-channel event handling
        self.grants: dict[tuple[uuid.UUID, str], tuple[float, bool]] = {}
        self.carrier = carrier  # the trunks' limits, held in Redis for every controller
        self.ari_lost_at: float | None = None
        self.claiming = asyncio.Lock()  # claim + mark held, atomically for reconcile
        self.limits = LimitsReader(pool)
        self.setup_times: list[float] = []
        self.flow = CallFlow(ari, pool)
        ari.on_event = self.on_event
        ari.on_connect = self.reconcile
        ari.event_types = HANDLED_EVENTS
        self.varset_dropped_on = 0  # the ARI connection asked for no ChannelVarset

    # ---- main loops -------------------------------------------------------------------

    async def run(self) -> None:
        async with self.pool.acquire() as conn:
            await store.register(conn, self.owner, self.settings.ari_url)
        await self.ari.start()
        loops = [self._discover(), self._renew_leases(), self._menu_timeouts(), self._publish(),
                 self._renew_channels()]
        try:
            await asyncio.gather(*loops)
        finally:
            for trunk in self.trunks.values():
                if trunk.task:
                    trunk.task.cancel()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                async with asyncio.timeout(DRAIN_S):  # what ended is written before leaving
                    await asyncio.gather(self.recorder.drain(), self.carrier.drain())
            await self.ari.close()
            for remote in self.remotes.values():
                await remote.close()

    async def _discover(self) -> None:
        """Start due sessions, prepare their audio, and run one dialler per busy trunk."""
        while not self.stopping.is_set():
            try:
                async with self.pool.acquire() as conn:
                    await store.activate_sessions(conn)
                    for row in await store.sessions_needing_media(conn):
                        await self._prepare_media(conn, row)
                    rows = await store.trunks_with_work(conn)
                for row in rows:
                    trunk = self.trunks.get(row["id"])
                    try:
                        config = VoiceConfig.model_validate(row["config"])
                    except ValueError as exc:  # one bad stored trunk never stops the others
                        log.warning("voice: trunk %s has an unusable config: %s", row["name"], exc)
                        continue
                    if trunk is None:
                        trunk = self.trunks[row["id"]] = Trunk(row["id"], row["name"], config)
                    trunk.config = config
                    if trunk.task is None or trunk.task.done():
                        trunk.task = asyncio.create_task(self._dial(trunk), name=f"trunk-{row['name']}")
                    trunk.wake.set()
            except DATABASE_TROUBLE as exc:
                log.warning("voice: database unavailable: %s", exc)
            await self._sleep(self.settings.voice_poll_s)

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self.stopping.wait(), seconds)
        except TimeoutError:
            pass

    async def _dial(self, trunk: Trunk) -> None:
        """Claim and originate for one trunk while it has capacity and work. Nothing that
        goes wrong with one call or one database round stops the trunk's dialler."""
        while not self.stopping.is_set():
            await self.ari.connected.wait()  # set only once reconciling is done
            try:
                await self._dial_round(trunk)
            except Exception:  # e.g. another app's unusable config naming this endpoint
                log.exception("voice: trunk %s: dialling round failed", trunk.name)
                await self._sleep(1.0)

    async def _dial_round(self, trunk: Trunk) -> None:
        limits = await self._limits(trunk.config)
        held = await self.carrier.held(trunk.config.trunk)  # every controller's calls
        free = 0 if held is None else limits.max_channels - held
        if free <= 0:
            trunk.wake.clear()
            await self._wait(trunk.wake, 0.5)  # another controller's release does not wake us
            return
        want = min(free, max(1, int(limits.cps * 2)))
        try:
            cutoff = await self._recover_lapsed(trunk)
            async with self.claiming, self.pool.acquire() as conn:  # reconcile waits
                claimed = await store.claim(conn, trunk.id, want,
                                            self.settings.voice_lease_s, self.owner,
                                            turn=trunk.turn, lapsed_before=cutoff)
                self.held.update(item.recipient.delivery_id for item, _ in claimed)
            trunk.turn += 1
        except DATABASE_TROUBLE as exc:
            log.warning("voice: trunk %s cannot claim now: %s", trunk.name, exc)
            await self._sleep(1.0)
            return
        if not claimed:
            trunk.wake.clear()
            await self._wait(trunk.wake, self.settings.voice_poll_s)
            return
        # Calls start in the claimed (fair) order, several at once: each one's checks, its
        # carrier slot and the originate round trip overlap the others'. The carrier's
        # slots keep the pacing, whatever the number in flight.
        try:  # the round's do-not-contact check: one query, not one per call
            async with self.pool.acquire() as conn:
                blocked = await suppressions.suppressed_in_sessions(
                    conn, "voice", (s for _, s in claimed),
                    (item.recipient.address for item, _ in claimed))
        except Exception as exc:  # nobody dialled: every claim is given back, no try spent
            log.warning("voice: trunk %s: the do-not-contact check failed: %s", trunk.name, exc)
            for item, session_id in claimed:
                self._in_background(self._give_back_patiently(
                    item, session_id, f"not dialled: {type(exc).__name__}: {exc}"[:300]))
            return
        # Calls start in groups of half the originates in flight: a group's carrier slots
        # are one Redis round (a round per call was a sixth of the controller's work at
        # full speed), and each call goes at its slot while the other half are under way.
        in_flight = max(1, self.settings.voice_originates_in_flight)
        gate = asyncio.Semaphore(in_flight)
        size = (in_flight + 1) // 2
        ordered = take_turns(claimed, lambda c: c[1])
        starting = []
        for i in range(0, len(ordered), size):
            group = ordered[i:i + size]
            for _ in group:  # a group starts once as many calls in flight are under way
                await gate.acquire()
            starting.append(asyncio.create_task(self._start_group(trunk, group, blocked, gate)))
        await asyncio.gather(*starting)

    async def _start_group(self, trunk: Trunk, group: list[tuple[Claimed, uuid.UUID]],
                           blocked: set[tuple[uuid.UUID, str]], gate: asyncio.Semaphore) -> None:
        """Start these claimed calls (`blocked`: the round's do-not-contact hits): their
        checks at once, then one Redis round for the carrier slots of those to be placed.
        Each call's step runs in a task of its own that gives its place in `gate` back
        however it ends; a claim given back or recorded instead never holds up the others."""
        verdicts = await asyncio.gather(*(
            self._verdict(trunk, item, session_id, (session_id, item.recipient.address) in blocked)
            for item, session_id in group))
        started: list[asyncio.Task[None]] = []
        placing: list[tuple[Claimed, uuid.UUID, SessionInfo]] = []
        for (item, session_id), verdict in zip(group, verdicts, strict=True):
            if isinstance(verdict, SessionInfo):
                placing.append((item, session_id, verdict))
            else:
                started.append(asyncio.create_task(
                    self._step(trunk, item, session_id, verdict, gate)))
        if placing:
            dials: list[Awaitable[None]]
            try:
                waits = await self._carrier_slots(
                    trunk.config, [channel_id(item.recipient.attempt_id) for item, _, _ in placing])
                dials = [self._dial_at(trunk, item, session_id, session, wait_s)
                         for (item, session_id, session), wait_s in zip(placing, waits, strict=True)]
            except Exception as exc:
                dials = [_raising(exc) for _ in placing]
            started += [asyncio.create_task(self._step(trunk, item, session_id, dial, gate))
                        for (item, session_id, _), dial in zip(placing, dials, strict=True)]
        await asyncio.gather(*started)

    async def _step(self, trunk: Trunk, item: Claimed, session_id: uuid.UUID,
                    step: Awaitable[None], gate: asyncio.Semaphore) -> None:
        """One claimed call's step (its dial, or its claim given back or recorded); whatever
        it hits is that call's failure alone, and its place in `gate` is given back."""
        try:
            await step
        except Exception as exc:  # one call's trouble never stops the dialler
            log.error("voice: starting a call to %s failed", item.recipient.address, exc_info=exc)
            await self._fail_unstarted(trunk, item, session_id, exc)
        finally:
            gate.release()

    async def _dial_at(self, trunk: Trunk, item: Claimed, session_id: uuid.UUID,
                       session: SessionInfo, wait_s: float | None) -> None:
        """Originate the call at its carrier slot (`wait_s` from now; None: no channel or
        slot to be had now, so the claim is given back)."""
        if wait_s is None:
            await self._give_back(item, session_id, None, "the trunk's channels or calls"
                                  " per second are all in use (across every controller)")
            return
        await asyncio.sleep(wait_s)
        await self._originate(trunk, item, session)

    async def _fail_unstarted(self, trunk: Trunk, item: Claimed, session_id: uuid.UUID,
                              exc: Exception) -> None:
        channel = channel_id(item.recipient.attempt_id)
        self.calls.pop(channel, None)
        trunk.calls.discard(channel)
        await self.carrier.release(trunk.config.trunk, channel)
        info = self.sessions.get(session_id)
        if info is None or isinstance(exc, (*DATABASE_TROUBLE, RedisError)):
            # Nothing dialled: no try spent. The database may be the trouble, so the claim
            # stays held (its lease renewed) until it could be given back.
            self._in_background(self._give_back_patiently(
                item, session_id, f"not dialled: {type(exc).__name__}: {exc}"[:300]))
            return
        with contextlib.suppress(Exception):  # _record retries database trouble itself
            await self._record(Call(item, info, trunk.id, trunk.config, channel),
                               Result("failed", retryable=True, provider_ref=channel,
                                      error=f"the call could not be started: {exc}"[:300]))
        self.held.discard(item.recipient.delivery_id)

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def _recover_lapsed(self, trunk: Trunk) -> datetime:
        """Before dialling anyone whose claim lapsed (its controller died or lost the
        database), ask the Asterisk that call went through whether it is still live: adopt
        it if it is ours to see, leave it to its owner if it lives elsewhere."""
        async with self.pool.acquire() as conn:
            rows, cutoff = await store.expired_claims(conn, trunk.id, self.owner)
        for row in rows:
            attempt = str(row["attempt_id"])
            live = await self._live(row["ari_url"], channel_id(attempt))
            if live is None:
                continue  # not live anywhere we can tell: the claim goes to the dialler
            async with self.pool.acquire() as conn:
                if row["ari_url"] not in (None, self.settings.ari_url):
                    await store.hold_off(conn, row, self.settings.voice_lease_s)
                    continue
                if not await store.take_over(conn, row, self.owner, self.settings.voice_lease_s):
                    continue
            log.info("voice: took over the live call %s of %s", channel_id(attempt),
                     row["claimed_by"])
            await self._adopt_or_close(row, live, attempt)
        return cutoff  # claims lapsing after this were not checked: not claimable yet

    async def _live(self, ari_url: str | None, channel: str) -> dict[str, Any] | None:
        """The channel if it is up on the Asterisk at `ari_url` (ours when unknown); None
        when it is gone or that Asterisk cannot be reached (then its calls are gone too)."""
        ari = self.ari if ari_url in (None, self.settings.ari_url) else self._remote(ari_url)
        try:
            found: dict[str, Any] = await ari.request("GET", f"/channels/{channel}")
            return found
        except AriError as exc:
            if exc.status == 0 and ari is self.ari:
                raise OSError(f"our Asterisk cannot say whether {channel} is live") from exc
            return None

    def _remote(self, ari_url: str) -> Ari:
        if ari_url not in self.remotes:
            self.remotes[ari_url] = Ari(ari_url, self.settings.ari_user,
                                        self.settings.ari_password, STASIS_APP)
        return self.remotes[ari_url]

    async def _wait(self, event: asyncio.Event, timeout_s: float) -> None:
        try:
            await asyncio.wait_for(event.wait(), timeout_s)
        except TimeoutError:
            pass

    async def _verdict(self, trunk: Trunk, item: Claimed, session_id: uuid.UUID,
                       suppressed: bool) -> SessionInfo | Awaitable[None]:
        """The claimed call's session if the call is to be placed now; else what becomes
        of its claim instead, to be awaited (`suppressed`: its address is on the app's
        do-not-contact list, as the round found it)."""
        try:
            session = await self._session(session_id)
            opens = trunk.config.window_opens(item.recipient.address, datetime.now(UTC))
            if opens is not None:
                return self._give_back(item, session_id, opens, "outside the calling window;"
                                       f" next call at {opens.isoformat()}")
            if not await self._granted(session.app_id, trunk.config.trunk):
                return self._record(Call(item, session, trunk.id, trunk.config, ""),
                                    Result("failed", error=f"trunk {trunk.config.trunk!r} is"
                                           " not granted to this app (any more); not dialled"))
        except Exception as exc:  # the call's failure, dealt with in its step
            return _raising(exc)
        if suppressed:
            return self._record(Call(item, session, trunk.id, trunk.config, ""),
                                Result(c.O_SUPPRESSED, error="address is on the do-not-contact list"))
        return session

    async def _originate(self, trunk: Trunk, item: Claimed, session: SessionInfo) -> None:
        """Place the call, its carrier channel and slot held."""
        channel = channel_id(item.recipient.attempt_id)
        call = Call(item, session, trunk.id, trunk.config, channel, originating=True)
        self.calls[channel] = call
        trunk.calls.add(channel)
        cfg = trunk.config
        try:
            await self.ari.originate(
                endpoint=f"PJSIP/{cfg.dialled(item.recipient.address)}@{cfg.trunk}",
                channel_id=channel, caller_id=cfg.caller_id, timeout_s=cfg.ring_timeout_s,
                variables={"HUB_ATTEMPT": item.recipient.attempt_id, "HUB_SESSION": str(session.id)},
                app_args=AMD_FIRST if call.amd.enabled else "outbound",
            )
        except AriError as exc:
            await self._originate_failed(call, exc)
        finally:
            call.originating = False

    async def _limits(self, cfg: VoiceConfig) -> Limits:
        """The endpoint's limits: the smallest over every transport naming it (any app)."""
        return await self.limits.get(cfg.trunk) or Limits(cfg.max_channels, cfg.cps)

    async def _carrier_slots(self, cfg: VoiceConfig, channels: list[str]) -> list[float | None]:
        """For each channel, one under the endpoint's cap and a call slot within its cps,
        both held in Redis across every controller: seconds until the slot, or None when
        either is not to be had now."""
        limits = await self._limits(cfg)
        return await self.carrier.take_calls(cfg.trunk, channels, limits.max_channels,
                                             limits.cps, MAX_CPS_WAIT_S)

    async def _renew_channels(self) -> None:
        """Keep this controller's channel leases alive (a dead one's lapse by themselves)."""
        while not self.stopping.is_set():
            await self._sleep(RENEW_EVERY_S)
            if await self._asterisk_gone():
                continue  # free the carrier's channels for the controllers that can dial
            by_endpoint: dict[str, list[str]] = {}
            for call in list(self.calls.values()):
                by_endpoint.setdefault(call.config.trunk, []).append(call.channel)
            for endpoint, channels in by_endpoint.items():
                lost = await self.carrier.renew(endpoint, channels)
                if lost:
                    log.warning("carrier %s: %d live calls had lost their channel lease;"
                                " counted again", endpoint, lost)

    async def _asterisk_gone(self) -> bool:
        """True once our Asterisk has not answered for ASTERISK_GONE_S (a websocket blip or
        a slow reconcile is not enough): its calls ended with it, so their claims and
        channels are no longer ours to keep."""
        if self.ari.connected.is_set():
            self.ari_lost_at = None
            return False
        if self.ari_lost_at is None:
            self.ari_lost_at = time.monotonic()
        if time.monotonic() - self.ari_lost_at <= ASTERISK_GONE_S:
            return False
        try:
            await asyncio.wait_for(self.ari.request("GET", "/asterisk/info", only="status"), 2)
        except (AriError, TimeoutError):
            return True
        return False

    async def _granted(self, app_id: uuid.UUID, endpoint: str) -> bool:
        """Whether the app may dial through `endpoint` now (a grant revoked with --force
        stops its calls within GRANT_CACHE_S)."""
        if endpoint in self.settings.open_trunk_names:
            return True
        key = (app_id, endpoint)
        hit = self.grants.get(key)
        if hit is None or hit[0] < time.monotonic():
            hit = (time.monotonic() + GRANT_CACHE_S, await grants.is_granted(self.pool, app_id,
                                                                           endpoint))
            self.grants[key] = hit
        return hit[1]

    async def _originate_failed(self, call: Call, exc: AriError) -> None:
        """Refused by Asterisk: a failed attempt. Never reached it (or it answered 503,
        not serving): given back, no try spent. No answer in time: ask whether the channel
        exists, and follow it if so."""
        if exc.status == 0 and exc.reached:
            try:
                await self.ari.request("GET", f"/channels/{call.channel}")
                log.info("voice: originate of %s timed out, but the call exists", call.channel)
                return  # its events will tell the rest
            except AriError as check:
                if check.status == 0:
                    call.note = "Asterisk did not answer whether the call was placed"
                    return  # reconcile decides once Asterisk answers again
        await self._forget(call)
        if exc.status in (0, 503):  # unreachable, or up but not serving ARI (shutting down)
            await self._give_back(call.claimed, call.session.id, None,
                                  f"not dialled, Asterisk unavailable: {str(exc)[:120]}")
            return
        await self._record(call, Result("failed", retryable=True, provider_ref=call.channel,
                                        error=f"originate refused: {exc}"))

    async def _give_back_patiently(self, item: Claimed, session_id: uuid.UUID, note: str) -> None:
        """Give back a claim whose call was never placed, trying again while the database is
        away (as recording does); until then the claim stays held, so no reconcile counts
        it as a call lost and spends a try on it."""
        self.held.add(item.recipient.delivery_id)
        given = False
        try:
            given = await patiently(lambda: self._give_back(item, session_id, None, note),
                                    RECORD_TRIES,
                                    lambda: f"voice: giving back {item.recipient.address}")
        finally:
            if not given:  # its lease lapses; the claim is no longer kept alive here
                log.error("voice: gave up giving back %s; its lease will lapse",
                          item.recipient.address)
                self.held.discard(item.recipient.delivery_id)

    async def _give_back(self, item: Claimed, session_id: uuid.UUID, at: datetime | None,
                         note: str) -> None:
        """Return the claim, due again at `at` (or shortly); it is no longer held once given
        back (a claim that could not be given back stays held)."""
        async with self.pool.acquire() as conn:
            await claims.give_back(conn, session_id, [item], self.owner,
                                   at=at or datetime.now(UTC) + GIVE_BACK_DELAY, note=note)
        self.held.discard(item.recipient.delivery_id)

    async def _session(self, session_id: uuid.UUID) -> SessionInfo:
        info = self.sessions.pop(session_id, None)
        if info is not None:
            self.sessions[session_id] = info  # most recently used last
            return info
        async with self.pool.acquire() as conn:
            row = await sessions.get(conn, None, session_id)
        if row is None or not row["media"] or "name" not in row["media"]:
            raise AudioError("the session's audio is not ready: "
                             + str((row["media"] or {}).get("error", "not prepared") if row else
                                   "session gone"))
        menu = parse_menu(row["instruction"].get("extras") or {})
        language = (row["instruction"].get("extras") or {}).get("language")
        prompts = {}
        if menu is not None:
            for text in menu.texts():
                prompts[text] = await self.audio.prepare(None, text, language)
        info = SessionInfo(row["id"], row["app_id"], row["retries"],
                           list(row["retry_intervals_s"]),
                           Media(row["media"]["name"], row["media"]["durationS"]), menu, prompts,
                           amd_override(row["instruction"].get("extras") or {}))
        self.sessions[session_id] = info
        if len(self.sessions) > SESSION_CACHE_MAX:  # forget the oldest not in a live call
            live = {c.session.id for c in self.calls.values()}
            for old in [k for k in self.sessions if k not in live][:len(self.sessions)
                                                                    - SESSION_CACHE_MAX]:
                del self.sessions[old]
        return info

    async def _prepare_media(self, conn: asyncpg.Connection, row: Any) -> None:
        """Fetch or synthesise once per session; unusable audio fails the session's
        deliveries before anyone is called."""
        part = row["instruction"]
        extras = part.get("extras") or {}
        try:
            media = await self.audio.prepare(part.get("fileUrl"), part.get("message"),
                                             extras.get("language"))
            menu = parse_menu(extras)
            for text in (menu.texts() if menu else []):
                await self.audio.prepare(None, text, extras.get("language"))
        except AudioError as exc:
            log.warning("session %s: %s", row["id"], exc)
            await deliveries.fail_all(conn, row["id"], f"audio unusable: {exc}")
            await store.set_media(conn, row["id"], {"error": str(exc)})
            await sessions.finish_if_done(conn, row["id"], report_base=self.settings.base_url)
            await asyncio.to_thread(self.kicker.webhooks)
            return
        await store.set_media(conn, row["id"], {"name": media.name, "durationS": media.duration_s})

    async def _renew_leases(self) -> None:
        last_reconcile = time.monotonic()
        while not self.stopping.is_set():
            await self._sleep(self.settings.voice_lease_s / 3)
            await self._sweep()
            if self.ari.connected.is_set() and time.monotonic() - last_reconcile > RECONCILE_EVERY_S:
                last_reconcile = time.monotonic()
                try:
                    await self.reconcile()  # anything of ours that nobody follows any more
                except Exception:  # never stops the controller: the next pass tries again
                    log.exception("voice: periodic reconcile failed")
            if await self._asterisk_gone():
                continue  # its calls are gone with it: let their claims lapse, to be retried
            ids = self.held | {call.claimed.recipient.delivery_id for call in self.calls.values()}
            try:
                async with self.pool.acquire() as conn:
                    await store.renew(conn, sorted(ids), self.settings.voice_lease_s, self.owner)
            except DATABASE_TROUBLE as exc:
                log.warning("voice: could not renew leases: %s", exc)

    async def _sweep(self) -> None:
        """Calls far past any sensible length: hang up, or record if Asterisk lost them."""
        now = time.monotonic()
        for call in list(self.calls.values()):
            limit = call.config.ring_timeout_s + call.session.media.duration_s + MAX_EXTRA_S
            if now - call.started < limit:
                continue
            try:
                await self.ari.request("GET", f"/channels/{call.channel}")
            except AriError as exc:
                if exc.status == 404 and call.channel in self.calls:
                    call.ended, call.note = now, LOST_NOTE
                    await self._forget(call)
                    await self._record(call, call.result(None, None))
                continue
            call.note = "the call lasted too long; hung up"
            await self.flow.hangup(call)

    async def _publish(self) -> None:
        """Live figures for /metrics: active calls per trunk, call setup time."""
        while not self.stopping.is_set():
            await self._sleep(1.0)
            active = {t.name: len(t.calls) for t in self.trunks.values()}
            setup, self.setup_times = self.setup_times, []
            metrics.calls_active(active)
            try:
                await asyncio.to_thread(self.kicker.publish_voice, self.owner, active, setup,
                                        self.ari.connected.is_set())
            except Exception as exc:  # metrics must never stop calls
                log.debug("voice: metrics not published: %s", exc)

    async def _menu_timeouts(self) -> None:
        while not self.stopping.is_set():
            await self._sleep(0.2)
            now = time.monotonic()
            for call in list(self.calls.values()):
                if call.menu_deadline is not None and now >= call.menu_deadline:
                    call.menu_deadline = None
                    call.menu = None
                    await self.flow.hangup(call)

    # ---- events ----------------------------------------------------------------------

    async def on_event(self, event: dict[str, Any]) -> None:
        """Called by the websocket reader: hand the event to its channel's chain and return
        at once (a slow database never delays other calls' playbacks and hang-ups). Events
        `_handle` would pass over (other variables set, when Asterisk still sends them)
        take no place in the chain."""
        if self.varset_dropped_on != self.ari.connections and _carries_hangup_var(event):
            self.varset_dropped_on = self.ari.connections
            log.info("voice: channels carry %s (ari.conf channelvars): no ChannelVarset"
                     " events needed", HANGUP_VAR)
            self._in_background(self.ari.filter_events(WITHOUT_VARSET,
                                                       connection=self.ari.connections))
        if not _acted_on(event):
            return
        key = _channel_of(event)
        task = asyncio.create_task(self._after(self.chains.get(key), event))
        self.chains[key] = task
        task.add_done_callback(lambda t: self._chain_done(key, t))

    def _chain_done(self, key: str, task: asyncio.Task[None]) -> None:
        if self.chains.get(key) is task:
            del self.chains[key]

    async def _after(self, previous: asyncio.Task[None] | None, event: dict[str, Any]) -> None:
        """Handle `event` once the channel's previous event is handled (order kept)."""
        if previous is not None:
            await asyncio.wait([previous])
        try:
            await self._handle(event)
        except Exception:  # one event's trouble must not stop the call's other events
            log.exception("voice: handling %s failed", event.get("type"))

    async def _handle(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        log.debug("voice: event %s on %s", kind, _channel_of(event))
        if kind == "PlaybackFinished":
            target = event["playback"].get("target_uri", "")
            call = self.calls.get(target.removeprefix("channel:"))
            if call is not None:
                await self.flow.playback_finished(call, event["playback"])
            return
        channel = event.get("channel") or {}
        call = self.calls.get(channel.get("id", ""))
        if kind == "StasisStart":
            if call is not None and call.up is None:
                self._answered(call)
            await self.flow.stasis_start(call, channel, event.get("args") or [])
        elif call is None:
            return
        elif kind == "ChannelDtmfReceived":
            await self.flow.dtmf(call, event.get("digit", ""))
        elif kind == "ChannelVarset" and event.get("variable") == HANGUP_VAR:
            call.hangup_by = event.get("value") or None
        elif kind == "ChannelDestroyed":
            if call.up is None and channel.get("state") == "Up":  # answered, never in the
                call.up = time.monotonic()  # app (or its StasisStart lost): no setup time
            call.hangup_by = (channel.get("channelvars") or {}).get(HANGUP_VAR) or call.hangup_by
            call.ended = time.monotonic()
            await self._forget(call)
            sip = int(event["tech_cause"]) if event.get("tech_cause") else None
            if not call.answered and is_trunk_problem(sip):
                note = trunk_problem_note(sip or 0)
                log.warning("trunk %s: %s (%s)", call.config.trunk, note, call.channel)
                await self.carrier.note_problem(call.config.trunk, sip or 0, note)
            await self._record(call, call.result(event.get("cause"), sip))

    def _answered(self, call: Call) -> None:
        call.up = time.monotonic()
        self.setup_times.append(call.up - call.started)
        metrics.CALL_SETUP_SECONDS.observe(call.up - call.started)

    # ---- recording -------------------------------------------------------------------

    async def _forget(self, call: Call) -> None:
        """The call is over: its carrier channel is given back in the background (the
        recording does not wait for Redis; a release that fails lapses with its lease),
        then its dialler is woken to use it."""
        self.calls.pop(call.channel, None)
        trunk = self.trunks.get(call.trunk_id)
        if trunk is not None:
            trunk.calls.discard(call.channel)
        if call.channel:
            self._in_background(self._release(call.config.trunk, call.channel, trunk))
        elif trunk is not None:
            trunk.wake.set()

    async def _release(self, endpoint: str, channel: str, trunk: Trunk | None) -> None:
        await self.carrier.release(endpoint, channel)
        if trunk is not None:  # after the release: a dialler at the cap would see it held
            trunk.wake.set()

    async def _record(self, call: Call, result: Result) -> None:
        """Record the attempt; while the database is away, keep the result (and the
        claim's lease, via `held`) and try again with a growing delay."""
        item = call.claimed
        self.held.add(item.recipient.delivery_id)
        decision = operator_decision(call.hangup_by, result, decide(
            result, tries=item.tries_before + 1, retries=call.session.retries,
            intervals_s=call.session.intervals_s))
        outcome = Outcome(item, result, decision, now_utc())
        if not await self.recorder.record(call.session.id, outcome):
            log.error("voice: gave up recording %s; reconcile will close it", call.channel)
        self.held.discard(item.recipient.delivery_id)

    async def _settled(self) -> None:
        """Asterisk answers ARI before it has loaded everything: calls placed in its first
        seconds may never report back. Wait until it has run ASTERISK_SETTLE_S."""
        try:
            info = await self.ari.request("GET", "/asterisk/info", only="status")
            started = datetime.strptime(info["status"]["startup_time"], "%Y-%m-%dT%H:%M:%S.%f%z")
        except (AriError, KeyError, TypeError, ValueError) as exc:
            log.info("voice: Asterisk's start time unknown (%s); waiting %s s", exc,
                     ASTERISK_SETTLE_S)
            await asyncio.sleep(ASTERISK_SETTLE_S)
            return
        age = (datetime.now(UTC) - started).total_seconds()
        if age < ASTERISK_SETTLE_S:
            await asyncio.sleep(ASTERISK_SETTLE_S - age)

    async def reconcile(self) -> None:
        """After (re)connecting: record calls that vanished, adopt those still up."""
        await self._settled()
        listed_at = time.monotonic()
        try:
            live = {ch["id"]: ch for ch in await self.ari.channels()}
        except AriError as exc:
            log.warning("voice: cannot list channels to reconcile: %s", exc)
            return
        for channel, call in list(self.calls.items()):
            if channel in live or call.originating or call.started > listed_at:
                continue
            pending = self.chains.get(channel)
            if pending is not None:  # its own events (e.g. ChannelDestroyed) come first
                await asyncio.wait([pending])
            if channel not in self.calls or await self._still_there(channel):
                continue
            call.ended = time.monotonic()
            call.note = LOST_NOTE
            await self._forget(call)
            await self._record(call, call.result(None, None))
        async with self.claiming, self.pool.acquire() as conn:  # no claim half-marked held
            orphans = await store.owned_open_calls(conn, self.owner)
            skip = set(self.held)
        for row in orphans:
            attempt = str(row["attempt_id"])
            channel = channel_id(attempt)
            if channel in self.calls or row["id"] in skip:
                continue  # followed here, or claimed and about to be dialled
            try:
                await self._adopt_or_close(row, live.get(channel), attempt)
            except Exception:  # one row's trouble never blocks reconciling the rest
                log.exception("voice: reconciling %s failed", channel)
        log.info("voice: reconciled with %d live channels", len(live))

    async def _still_there(self, channel: str) -> bool:
        """Whether Asterisk still has the channel (only a 404 says it is gone)."""
        try:
            await self.ari.request("GET", f"/channels/{channel}")
        except AriError as exc:
            return exc.status != 404
        return True

    async def _adopt_or_close(self, row: Any, live: dict[str, Any] | None, attempt: str) -> None:
        session = await self._session(row["session_id"])
        trunk_id = await self.pool.fetchval(
            "SELECT transport_id FROM sessions WHERE id = $1", row["session_id"])
        trunk = self.trunks.get(trunk_id)
        config = trunk.config if trunk else VoiceConfig.model_validate(
            await self.pool.fetchval("SELECT config FROM transports WHERE id = $1", trunk_id))
        item = Claimed(Recipient(row["id"], attempt, row["attempts"], row["address"]), row["tries"])
        call = Call(item, session, trunk_id, config, channel_id(attempt))
        if live is not None and attempt_of(live["id"]) == attempt:
            self.calls[call.channel] = call
            if trunk:
                trunk.calls.add(call.channel)
            await self.carrier.renew(config.trunk, [call.channel])  # counted, whatever the cap
            log.info("voice: adopted live call %s", call.channel)
            if live.get("state") == "Up":
                call.up = time.monotonic()
                await self.flow.resume_playback(call)
            return
        call.note = LOST_NOTE
        await self._record(call, call.result(None, None))


async def _raising(exc: Exception) -> None:
    """A step that fails with `exc` (a call whose checks failed goes the failed way)."""
    raise exc


def _acted_on(event: dict[str, Any]) -> bool:
    kind = event.get("type")
    if kind == "ChannelVarset":
        return event.get("variable") == HANGUP_VAR
    return kind in HANDLED_EVENTS


def _carries_hangup_var(event: dict[str, Any]) -> bool:
    """Whether the event's channel lists HANGUP_VAR among its `channelvars` (set or not)."""
    return HANGUP_VAR in ((event.get("channel") or {}).get("channelvars") or {})


async def _until_terminated(work: Coroutine[Any, Any, None]) -> None:
    """Run `work` until it ends or the process gets SIGTERM; then cancel it and wait
    for its clean-up."""
    loop = asyncio.get_running_loop()
    task = asyncio.create_task(work)
    terminated = asyncio.Event()
    try:
        loop.add_signal_handler(signal.SIGTERM, terminated.set)
    except (NotImplementedError, RuntimeError):  # not the main thread, or no signals here
        await task
        return
    stop = asyncio.create_task(terminated.wait())
    try:
        await asyncio.wait([task, stop], return_when=asyncio.FIRST_COMPLETED)
    finally:  # on SIGTERM, or when we are cancelled ourselves: `work` cleans up first
        stop.cancel()
        loop.remove_signal_handler(signal.SIGTERM)
        if not task.done():
            if terminated.is_set():
                log.info("voice: SIGTERM: writing what has ended, then leaving")
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if not terminated.is_set():
        task.result()  # its own end, or its error


def _channel_of(event: dict[str, Any]) -> str:
    """The channel an event is about (a playback's target channel for playback events)."""
    if "playback" in event:
        return str(event["playback"].get("target_uri", "")).removeprefix("channel:")
    return str((event.get("channel") or {}).get("id", ""))


async def serve(settings: Settings) -> None:
    """Run the controller until cancelled or sent SIGTERM (`docker stop`): then it stops
    dialling and writes what has ended before it leaves (`Controller.run`); calls still
    up are adopted by the next controller."""
    metrics.serve(metrics.VOICE, settings.metrics_host, settings.voice_metrics_port, "voice")
    pool = await create_pool(settings.database_url, min_size=1, max_size=10, custom_plans=True)
    redis = Redis.from_url(settings.redis_url, socket_timeout=2, socket_connect_timeout=2)
    ari = Ari(settings.ari_url, settings.ari_user, settings.ari_password, STASIS_APP,
              rest_over_websocket=settings.ari_rest_over_websocket)
    aredis = async_redis(settings.redis_url, timeout_s=2, connect_timeout_s=1)
    controller = Controller(settings, pool, ari, Kicker(redis), AudioStore(settings),
                            Carrier(aredis))
    agi = await start_agi(settings, pool, controller.audio)  # inbound callbacks (§8.5)
    ami_state = asyncio.create_task(ami.watch(settings, metrics.ami_connected))
    try:
        await _until_terminated(controller.run())
    finally:
        ami_state.cancel()
        if agi is not None:
            await agi.close()
        await pool.close()
        redis.close()
        await aredis.aclose()
