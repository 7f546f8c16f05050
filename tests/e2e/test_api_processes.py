"""`HUB_API_PROCESSES`: several `hub api` processes on one port, seen from outside as one
API: every request answered, /metrics counting for the group whichever process answers,
a killed process replaced with its counts kept, SIGTERM stopping them all, and a group
that cannot start saying why and exiting."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from twilio.request_validator import RequestValidator

from hub.api.group import MAX_RESTARTS
from tests.conftest import ROOT, TWILIO_TOKEN, Procs, base_env
from tests.helpers import eventually, free_port

pytestmark = pytest.mark.e2e
CALLBACKS = 40
SCRAPES = 12


def members(supervisor: int) -> list[int]:
    """The supervisor's child processes (the group's members)."""
    text = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text()
    return [int(pid) for pid in text.split()]


async def scrape(url: str) -> dict[str, float]:
    """/metrics over a connection of its own (so that any member may answer it)."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        async with http.get(f"{url}/metrics") as resp:
            assert resp.status == 200, await resp.text()
            text = await resp.text()
    return {s.name + str(sorted(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def post_receipts(group: str, public: str, transport_id: str, count: int) -> None:
    """`count` signed status callbacks for message ids no one sent (each kept as an early
    receipt: counted as `stored`), each over a new connection."""
    path = f"/v1/callbacks/twilio/{transport_id}"
    validator = RequestValidator(TWILIO_TOKEN)

    async def one(i: int) -> None:
        params = {"MessageSid": f"SMgroup{time.time_ns()}{i}", "MessageStatus": "delivered"}
        async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(force_close=True)) as http, http.post(
                group + path, data=urlencode(params), headers={
                    "Content-Type": "application/x-www-form-urlencoded",
                    "X-Twilio-Signature": validator.compute_signature(public + path, params)
                }) as resp:
            assert resp.status == 204, await resp.text()

    await asyncio.gather(*(one(i) for i in range(count)))


def listeners(port: int) -> int:
    """Sockets listening on this IPv4 port (/proc/net/tcp: state 0A)."""
    lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return sum(1 for line in lines
               if line.split()[1].endswith(f":{port:04X}") and line.split()[3] == "0A")


def alive(pid: int) -> bool:
    """Running: not gone and not a zombie (an exited process nobody has reaped yet)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def rss(pid: int) -> float:
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines()
                if x.startswith("VmRSS:"))
    return float(line.split()[1]) * 1024


async def settled(supervisor: subprocess.Popen[bytes], port: int, gone: int = 0) -> bool:
    """The group has its 2 members, `gone` not among them, both listening."""
    now = members(supervisor.pid)
    return len(now) == 2 and gone not in now and listeners(port) == 2


def stored(samples: dict[str, float]) -> float:
    return samples.get("hub_receipts_total[('result', 'stored')]", 0.0)


async def test_two_processes_serve_one_port_as_one_api(
        procs: Procs, api_server: str, twilio_transport: Any) -> None:
    assert (await scrape(api_server))["hub_api_processes[]"] == 1  # the shared one, alone
    transport = await twilio_transport()
    port = free_port()
    group = f"http://127.0.0.1:{port}"
    supervisor = procs.api(port, HUB_API_PROCESSES="2", HUB_METRICS_CACHE_S="0")
    await eventually(lambda: settled(supervisor, port), 20, "2 members")
    first = members(supervisor.pid)
    environ = Path(f"/proc/{first[0]}/environ").read_bytes().split(b"\0")
    folder = Path(next(v for v in environ if v.startswith(b"HUB_API_GROUP="))
                  .split(b"=", 1)[1].decode())

    await post_receipts(group, api_server, transport["id"], CALLBACKS)
    # Each scrape may be answered by either member; every one counts all the callbacks.
    seen = [await scrape(group) for _ in range(SCRAPES)]
    assert [stored(s) for s in seen] == [CALLBACKS] * SCRAPES
    assert all(s["hub_api_processes[]"] == 2 for s in seen)
    for pid in first:  # each member's own process_*, labelled with its pid
        reported = seen[-1][f"process_resident_memory_bytes[('pid', '{pid}')]"]
        assert 0.5 * rss(pid) < reported < 2 * rss(pid)

    # A member killed is replaced; the group's counts keep what it had counted.
    os.kill(first[0], signal.SIGKILL)
    await eventually(lambda: settled(supervisor, port, first[0]), 20, "the killed member replaced")
    assert first[1] in members(supervisor.pid)
    await post_receipts(group, api_server, transport["id"], 2)

    async def counted_all() -> bool:
        return {stored(await scrape(group)) for _ in range(SCRAPES)} == {CALLBACKS + 2.0}
    await eventually(counted_all, 20, "every member to count the callbacks of the killed one")
    assert "exited with code -9; starting another" in procs.logs()
    assert not [p for p in folder.iterdir() if str(first[0]) in p.name
                and not p.name.startswith("counter_")]  # only its counts are kept

    # SIGTERM stops the whole group at once and removes its directory.
    now = members(supervisor.pid)
    start = time.monotonic()
    supervisor.send_signal(signal.SIGTERM)
    assert supervisor.wait(30) == 0
    assert time.monotonic() - start < 5
    assert not [pid for pid in now if alive(pid)]
    assert not folder.exists()
    assert "did not stop" not in procs.logs()


async def test_ctrl_c_stops_the_group_without_restarts(procs: Procs) -> None:
    """SIGINT to the whole process group (a terminal's Ctrl-C): the members exit by
    themselves while the supervisor stops; none is replaced."""
    port = free_port()
    supervisor = procs.api(port, HUB_API_PROCESSES="2")
    await eventually(lambda: settled(supervisor, port), 20, "2 members")
    os.killpg(supervisor.pid, signal.SIGINT)
    assert supervisor.wait(30) == 0
    assert "starting another" not in procs.logs()
    assert listeners(port) == 0


async def test_members_go_when_their_supervisor_is_killed(procs: Procs) -> None:
    port = free_port()
    supervisor = procs.api(port, HUB_API_PROCESSES="2")
    await eventually(lambda: settled(supervisor, port), 20, "2 members")
    left = members(supervisor.pid)
    os.kill(supervisor.pid, signal.SIGKILL)  # the supervisor only, not its process group

    async def gone() -> bool:
        return not [p for p in left if alive(p)] and listeners(port) == 0
    await eventually(gone, 20, "the members to stop and the port to be free")


async def test_a_member_that_keeps_dying_stops_the_group(procs: Procs) -> None:
    port = free_port()
    supervisor = procs.api(port, HUB_API_PROCESSES="2")
    killed: list[int] = []
    for _ in range(MAX_RESTARTS + 1):  # each one ready (listening) when it is killed
        await eventually(lambda: settled(supervisor, port, *killed[-1:]), 20, "2 members")
        killed.append(members(supervisor.pid)[0])
        os.kill(killed[-1], signal.SIGKILL)
    assert supervisor.wait(30) == 1
    assert f"the {MAX_RESTARTS + 1}. in" in procs.logs()
    assert listeners(port) == 0


async def test_a_member_that_dies_before_it_listens_stops_the_group(procs: Procs) -> None:
    port = free_port()
    supervisor = procs.start("api", HUB_API_PORT=str(port), HUB_API_PROCESSES="2")
    victim = await eventually(lambda: asyncio.sleep(0, members(supervisor.pid)[:1]), 20,
                              "a member started")
    os.kill(victim[0], signal.SIGKILL)  # while it imports: long before it listens
    assert supervisor.wait(30) == 1
    assert f"API process {victim[0]} exited with code -9 before it listened" in procs.logs()
    assert listeners(port) == 0


def test_a_group_refuses_a_port_another_program_listens_on() -> None:
    with socket.socket() as taken:  # another program on the port
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # even one that shares
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run([sys.executable, "-m", "hub.cli.main", "api"], cwd=ROOT,
                             env=base_env(HUB_API_PORT=str(port), HUB_API_PROCESSES="2"),
                             capture_output=True, text=True, timeout=60)
    assert out.returncode == 1, out.stderr
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in out.stderr
    assert "API: 2 processes" not in out.stderr  # no member was started


def test_a_bad_process_count_is_refused() -> None:
    out = subprocess.run([sys.executable, "-m", "hub.cli.main", "api"], cwd=ROOT,
                         env=base_env(HUB_API_PROCESSES="-1"), capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 1
    assert out.stderr.startswith("hub: bad setting: HUB_API_PROCESSES:"), out.stderr
