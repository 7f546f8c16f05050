"""Inbound callbacks over FastAGI (DESIGN §8.5), end to end: `hub voice` with its FastAGI
server, the embedded Asterisk, SIPp phones for the broadcast, and a SIPp caller that calls
the trunk number back with its audio sent to an RTP counter."""

from __future__ import annotations

import asyncio
import socket
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web

from hub.config import Settings
from hub.dev.caller import Caller
from hub.dev.phones import RtpCounter
from hub.voice.audio import AudioStore
from hub.voice.callbacks import FALLBACK_TEXT, PROMPT_TEXT
from tests.conftest import AGI_PORT, SIP_PORT, Procs, TestPhones
from tests.helpers import Api, eventually, local_server

pytestmark = pytest.mark.e2e
TONE_S = 3.0
PACKETS_PER_S = 50  # 20 ms frames


@dataclass
class CallBack:
    caller: Caller
    rtp: RtpCounter

    def packets(self) -> int:
        return sum(len(t) for t in self.rtp.streams.values())


@pytest.fixture
async def callback(asterisk: None, tmp_path: Path) -> AsyncIterator[CallBack]:
    rtp = RtpCounter()
    await rtp.start()
    yield CallBack(Caller(tmp_path, rtp.port, SIP_PORT), rtp)
    rtp.stop()


@pytest.fixture
async def tone_url(tmp_path: Path) -> AsyncIterator[str]:
    path = tmp_path / "tone.wav"
    subprocess.run(["sox", "-n", "-r", "8000", "-c", "1", str(path), "synth", str(TONE_S),
                    "sine", "440", "vol", "0.5"], check=True)
    body = path.read_bytes()

    async def serve(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="audio/wav")

    app = web.Application()
    app.router.add_get("/tone.wav", serve)
    runner, base = await local_server(app)
    yield f"{base}/tone.wav"
    await runner.cleanup()


async def spoken_s(settings: Settings, text: str) -> float:
    """The length of one of the hub's spoken prompts (the same cached file it plays)."""
    return (await AudioStore(settings).prepare(None, text)).duration_s


async def start_voice(procs: Procs) -> None:
    procs.start("voice", HUB_AGI_PORT=str(AGI_PORT))

    async def listening() -> bool | None:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", AGI_PORT)
        except OSError:
            return None
        writer.close()
        return True
    await eventually(listening, 30, "the FastAGI server never listened:\n" + procs.logs())


async def broadcast(api: Api, number: str, url: str) -> tuple[str, dict[str, Any]]:
    created = await api.submit({"transport": {"type": "voice", "fileUrl": url},
                                "audience": [number], "options": {}})
    done = await api.wait_status(created["sessionId"], timeout_s=60)
    return created["sessionId"], done


async def callback_rows(db: asyncpg.Pool) -> list[dict[str, Any]]:
    return [dict(r) for r in await db.fetch("SELECT * FROM callbacks ORDER BY id")]


async def test_callback_replays_the_message_and_is_recorded_on_the_delivery(
    api: Api, db: asyncpg.Pool, voice_transport: dict[str, Any], phones: TestPhones,
    procs: Procs, callback: CallBack, tone_url: str, settings: Settings,
) -> None:
    number = "+9779812345630"
    await start_voice(procs)
    sid, done = await broadcast(api, number, tone_url)
    assert done["counts"] == {"delivered": 1}, (await api.deliveries(sid), procs.logs()[-3000:])
    prompt_s = await spoken_s(settings, PROMPT_TEXT)

    assert await callback.caller.call(number.removeprefix("+")) == 0  # no '+' in From
    heard = callback.packets()
    expected = (TONE_S + prompt_s) * PACKETS_PER_S
    assert 0.9 * expected <= heard <= expected + PACKETS_PER_S, (heard, expected)

    [row] = await callback_rows(db)
    assert (row["app_id"], str(row["session_id"]), row["caller"], row["trunk"]) == (
        api.app.app_id, sid, number, "trunk")
    assert row["channel"].startswith("PJSIP/trunk-") and row["ended_at"] is not None
    assert row["digits"] == "" and row["suppressed"] is False
    assert TONE_S - 0.3 <= row["listened_s"] <= TONE_S + 0.3, row
    delivery = (await api.deliveries(sid))[number]
    assert delivery["status"] == "delivered" and delivery["outcome"] == "answered"
    [entry] = delivery["detail"]["callbacks"]
    assert entry["digits"] == "" and entry["listenedS"] == pytest.approx(row["listened_s"], 0.01)
    assert entry["at"].startswith(row["started_at"].isoformat()[:19])
    assert delivery["detail"]["played"] is True  # the call's own detail is kept


async def test_pressing_9_stops_the_next_calls(
    api: Api, db: asyncpg.Pool, voice_transport: dict[str, Any], phones: TestPhones,
    procs: Procs, callback: CallBack, tone_url: str,
) -> None:
    number = "+9779812345640"
    await start_voice(procs)
    sid, _ = await broadcast(api, number, tone_url)

    assert await callback.caller.call(number, press="9", delay_ms=1000) == 0
    [row] = await callback_rows(db)
    assert row["digits"] == "9" and row["suppressed"] is True
    assert 0.5 <= row["listened_s"] < TONE_S - 0.5, row  # the 9 cut the message short
    listed = await db.fetch("SELECT address, transport_type FROM suppressions WHERE app_id = $1",
                            api.app.app_id)
    assert [(r["address"], r["transport_type"]) for r in listed] == [(number, "voice")]
    [entry] = (await api.deliveries(sid))[number]["detail"]["callbacks"]
    assert entry["digits"] == "9"

    calls_before = len(phones.rtp.summary())
    next_sid, _ = await broadcast(api, number, tone_url)
    after = (await api.deliveries(next_sid))[number]
    assert after["outcome"] == "suppressed", after
    assert len(phones.rtp.summary()) == calls_before  # the phone was not called again


async def test_unknown_caller_hears_the_fallback(
    db: asyncpg.Pool, procs: Procs, callback: CallBack, settings: Settings,
    api_server: str,
) -> None:
    await start_voice(procs)
    fallback_s = await spoken_s(settings, FALLBACK_TEXT)
    assert await callback.caller.call("+9779800000099") == 0
    heard = callback.packets()
    assert 0.9 * fallback_s * PACKETS_PER_S <= heard <= (fallback_s + 1) * PACKETS_PER_S, heard
    [row] = await callback_rows(db)
    assert (row["app_id"], row["session_id"], row["delivery_id"]) == (None, None, None)
    assert (row["caller"], row["trunk"]) == ("+9779800000099", "trunk")
    assert row["listened_s"] == pytest.approx(fallback_s, abs=0.3)


async def test_early_disconnects_and_stalled_clients_never_stop_the_next_callback(
    db: asyncpg.Pool, procs: Procs, callback: CallBack, settings: Settings,
    api_server: str,
) -> None:
    await start_voice(procs)
    # Connects and closes at once; sends half the headers and closes; half and stalls.
    with socket.create_connection(("127.0.0.1", AGI_PORT)):
        pass
    with socket.create_connection(("127.0.0.1", AGI_PORT)) as half:
        half.sendall(b"agi_network: yes\nagi_network_script: callback\nagi_chan")
    stalled = socket.create_connection(("127.0.0.1", AGI_PORT))
    stalled.sendall(b"agi_network: yes\nagi_network_script: callback\n")
    try:
        # A caller who hangs up mid-message, then a full callback, while one client stalls.
        assert await callback.caller.call("+9779800000098", hangup_after_ms=1000) == 0
        assert await callback.caller.call("+9779800000097") == 0
    finally:
        stalled.close()
    fallback_s = await spoken_s(settings, FALLBACK_TEXT)
    rows = await callback_rows(db)
    assert [r["caller"] for r in rows] == ["+9779800000098", "+9779800000097"]
    # Hung up 1 s after the answer: heard the fallback until then (less the AGI set-up).
    assert 0.1 <= rows[0]["listened_s"] <= 1.3 < fallback_s, rows[0]
    assert rows[0]["ended_at"] is not None
    assert rows[1]["listened_s"] == pytest.approx(fallback_s, abs=0.3)
    assert callback.packets() >= 0.9 * (fallback_s + 1.0) * PACKETS_PER_S
    assert "sent no complete headers" in procs.logs()


async def test_without_the_hub_the_caller_hears_a_goodbye(
    db: asyncpg.Pool, callback: CallBack,
) -> None:
    # No `hub voice` runs: the dialplan's AGI cannot connect and falls through to
    # Playback(vm-goodbye), about 0.9 s, instead of leaving the caller in silence.
    assert await callback.caller.call("+9779800000096") == 0
    assert 25 <= callback.packets() <= 75, callback.packets()
    assert await callback_rows(db) == []
