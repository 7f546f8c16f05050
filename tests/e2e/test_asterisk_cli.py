"""The operator's Asterisk CLI over AMI and ARI, driven through the real `hub` binary
against the embedded Asterisk and SIPp phones: `hub asterisk`, `hub calls`,
`hub calls hangup` (recorded by the delivery), `hub trunks`, AMI reconnecting after
Asterisk restarts, and one-line errors when AMI or ARI cannot be used."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from typing import Any

import pytest

from hub.dev import siplog
from hub.voice.ami import Ami
from tests.conftest import AMI_PORT, ARI_URL, ASTERISK_ENV, PHONES_PORT, ROOT, Procs, TestPhones, base_env
from tests.e2e import test_voice
from tests.e2e.test_voice import attempts, num, voice
from tests.helpers import Api, eventually

pytestmark = pytest.mark.e2e
tone, long_audio = test_voice.tone, test_voice.media  # the voice tests' audio server


def hub(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The real CLI, as an operator runs it."""
    return subprocess.run([sys.executable, "-m", "hub.cli.main", *args], cwd=ROOT,
                          env=base_env(**env), capture_output=True, text=True, timeout=60)


def hub_json(*args: str) -> Any:
    done = hub(*args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


async def live_call(sid: str) -> dict[str, Any]:
    async def up() -> dict[str, Any] | None:
        rows = await asyncio.to_thread(hub_json, "calls")
        return next((r for r in rows if r["sessionId"] == sid and r["state"] == "Up"), None)
    return await eventually(up, 30, "the call to be up")


async def test_operator_sees_and_hangs_up_a_live_call(
    api: Api, voice_transport: dict[str, Any], phones: TestPhones, procs: Procs, long_audio: str,
) -> None:
    procs.start("voice")
    created = await api.submit(voice([num(30)], file_url=f"{long_audio}/tone12.wav", retries=2,
                                     retryIntervalMinutes="0.02"))
    sid = created["sessionId"]
    call = await live_call(sid)
    assert call["id"].startswith("hub-") and call["durationS"] >= 0

    shown = await asyncio.to_thread(hub, "asterisk", "core show channels")
    assert shown.returncode == 0, shown.stderr
    assert call["name"] in shown.stdout and "1 active channel" in shown.stdout, shown.stdout

    [trunk] = [t for t in await asyncio.to_thread(hub_json, "trunks")
               if t["endpoint"] == "trunk"]
    assert trunk["contact"] == f"sip:127.0.0.1:{PHONES_PORT}" and trunk["qualify"], trunk
    assert trunk["activeCalls"] == 1 and trunk["heldChannels"] == 1, trunk
    assert trunk["cap"] == 20 and trunk["callsLastMinute"] == 1, trunk
    assert trunk["cps"] == pytest.approx(1 / 60, abs=0.01), trunk

    hung_at = time.time()
    done = await asyncio.to_thread(hub, "calls", "hangup", call["id"])
    assert done.returncode == 0, done.stderr
    finished = await api.wait_status(sid, timeout_s=20)
    assert finished["counts"] == {"cancelled": 1}, finished
    [attempt] = await attempts(api, sid, num(30))
    assert attempt["outcome"] == "answered" and attempt["detail"]["hangupBy"] == "operator"
    assert attempt["detail"]["played"] is False and attempt["detail"]["talkS"] < 8
    [phone_call] = siplog.calls(phones.phones.logs)
    assert phone_call.end is not None and phone_call.end - hung_at < 3, "the phone saw no BYE"
    after = await asyncio.to_thread(hub_json, "calls")
    assert [r for r in after if r["id"] == call["id"]] == []


async def test_hangup_with_retry_leaves_it_to_the_retry_policy(
    api: Api, voice_transport: dict[str, Any], phones: TestPhones, procs: Procs, long_audio: str,
) -> None:
    procs.start("voice")
    created = await api.submit(voice([num(40)], file_url=f"{long_audio}/tone12.wav", retries=1,
                                     retryIntervalMinutes="0.02"))
    sid = created["sessionId"]
    first = await live_call(sid)
    assert (await asyncio.to_thread(hub, "calls", "hangup", first["id"], "--retry")
            ).returncode == 0

    async def second() -> dict[str, Any] | None:
        found = await live_call(sid)
        return found if found["id"] != first["id"] else None
    again = await eventually(second, 30, "the retry's call")
    assert (await asyncio.to_thread(hub, "calls", "hangup", again["id"])).returncode == 0
    finished = await api.wait_status(sid, timeout_s=20)
    assert finished["counts"] == {"cancelled": 1}, finished
    tries = await attempts(api, sid, num(40))
    assert [a["detail"]["hangupBy"] for a in tries] == ["operator", "operator"]


async def test_ami_reconnects_after_asterisk_restarts(phones: TestPhones) -> None:
    ami = Ami("127.0.0.1", AMI_PORT, "hub", "hub", reconnect_s=1)
    await ami.connect()
    try:
        assert ami.connected and "active channel" in await ami.command("core show channels")
        restarted_at = time.monotonic()
        restart = await asyncio.to_thread(
            subprocess.run, ["bash", str(ROOT / "scripts" / "asterisk.sh"), "restart"],
            env=ASTERISK_ENV, capture_output=True, text=True, timeout=300)
        assert restart.returncode == 0, restart.stderr
        assert await ami.wait_connected(30), "AMI did not reconnect"
        uptime = await ami.command("core show uptime seconds")
        assert "System uptime" in uptime, uptime
        seconds = int(uptime.split("System uptime:")[1].split()[0])
        assert seconds <= time.monotonic() - restarted_at + 1, "the same Asterisk as before"
    finally:
        ami.close()


def one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode != 0, done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stdout == "", done.stdout
    return lines[0]


@pytest.mark.usefixtures("asterisk")
def test_unusable_ami_or_ari_gives_one_line() -> None:
    line = one_line_error(hub("asterisk", "core show channels", HUB_AMI_PORT="1"))
    assert line.startswith("hub: AMI at 127.0.0.1:1 is unreachable"), line
    line = one_line_error(hub("trunks", HUB_AMI_PASSWORD="wrong"))
    assert "refused the login of user hub" in line, line
    line = one_line_error(hub("asterisk", "core show channels", HUB_AMI_PASSWORD="wrong"))
    assert "refused the login" in line, line
    for args in (("calls",), ("trunks", "--json"), ("calls", "hangup", "hub-x")):
        line = one_line_error(hub(*args, HUB_ARI_URL="http://127.0.0.1:1"))
        assert line.startswith("hub: ARI at http://127.0.0.1:1 is unreachable"), line
    line = one_line_error(hub("calls", HUB_ARI_PASSWORD="wrong"))
    assert line == f"hub: ARI at {ARI_URL} refused user hub", line
    line = one_line_error(hub("asterisk", "core show nonsense"))
    assert line.startswith("hub: Asterisk: No such command 'core show nonsense'"), line
    line = one_line_error(hub("calls", "hangup", "hub-not-there"))
    assert line == "hub: no live call hub-not-there", line
