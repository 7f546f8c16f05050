"""A SIPp caller that calls the trunk number back (DESIGN §8.5), for tests and the demo:
one INVITE from 127.0.0.1 to Asterisk's SIP port, the caller's number in From, what it
hears sent to an RTP port (an `RtpCounter`). See caller.xml."""

from __future__ import annotations

import asyncio
import socket
from importlib import resources
from pathlib import Path

TRUNK_NUMBER = "+9771000000"


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


class Caller:
    def __init__(self, workdir: Path, rtp_port: int, sip_port: int = 5060) -> None:
        self.workdir = workdir
        self.rtp_port = rtp_port
        self.sip_port = sip_port
        self.calls = 0

    async def call(self, number: str, *, press: str | None = None, hangup_after_ms: int | None = None,
                   delay_ms: int = 1000, dialled: str = TRUNK_NUMBER, timeout_s: float = 60) -> int:
        """Call `dialled` as `number` and return SIPp's exit code (0: the call went as the
        scenario says). `press`: a digit pressed `delay_ms` after the answer; otherwise
        `hangup_after_ms` hangs up first; otherwise the caller listens until hung up."""
        self.calls += 1
        after = "press" if press else "hangup" if hangup_after_ms is not None else "listen"
        scenario = (resources.files("hub.dev") / "caller.xml").read_text()
        for key, value in (("__CALLER__", number), ("__RTP_PORT__", str(self.rtp_port)),
                           ("__AFTER_ANSWER__", after), ("__DIGIT__", press or "9"),
                           ("__DELAY_MS__", str(hangup_after_ms if after == "hangup"
                                                else delay_ms))):
            scenario = scenario.replace(key, value)
        path = self.workdir / f"caller-{self.calls}.xml"
        path.write_text(scenario)
        proc = await asyncio.create_subprocess_exec(
            "sipp", f"127.0.0.1:{self.sip_port}", "-sf", str(path), "-m", "1", "-s", dialled,
            "-i", "127.0.0.1", "-p", str(_free_udp_port()), "-mp", str(_free_udp_port()),
            "-nostdin", "-timeout", f"{int(timeout_s)}s", "-timeout_error",
            "-trace_err", "-error_file", str(self.workdir / f"caller-{self.calls}-errors.log"),
            "-trace_msg", "-message_file", str(self.workdir / f"caller-{self.calls}-sip.log"),
            cwd=self.workdir, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL)
        try:
            return await asyncio.wait_for(proc.wait(), timeout_s + 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return -1
