"""SIPp playing an audience of phones behind the embedded trunk (127.0.0.1:5070), for the
demo, the tests and the benchmarks. Behaviours follow the dialled number's last digit
(see phones.xml); any behaviour can be moved to another digit, or to "x" (none)."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from importlib import resources
from pathlib import Path

from hub.dev.pcap import write_rtp_pcap

BEHAVIOURS = {"busy": "1", "noanswer": "2", "notfound": "3", "congested": "4",
              "declined": "5", "early": "6", "press1": "7", "press9": "8", "machine": "9",
              "forbidden": "x"}
GREETING = ("Hello, you have reached the voicemail of Ram Bahadur. I cannot take your call "
            "right now. Please leave your name and number after the tone and I will call back.")
TRUNK_CONTACT_PORT = 5070


class PhonesError(Exception):
    """SIPp could not be started."""


class Phones:
    def __init__(self, workdir: Path, rtp_port: int, *, keep_log: bool = False,
                 sip_port: int = TRUNK_CONTACT_PORT) -> None:
        self.workdir = workdir
        self.sip_port = sip_port
        self.rtp_port = rtp_port
        self.proc: subprocess.Popen[bytes] | None = None
        self.keep_log = keep_log
        self.logs: list[Path] = []  # SIPp's message traces, one per start

    def greeting(self) -> Path:
        """An answering machine's greeting as a PCMU RTP pcap (made once per folder)."""
        path = self.workdir / "greeting.pcap"
        if not path.exists():
            wav, raw = self.workdir / "greeting.wav", self.workdir / "greeting.ul"
            subprocess.run(["espeak-ng", "-w", str(wav), GREETING], check=True)
            subprocess.run(["sox", str(wav), "-r", "8000", "-c", "1", "-t", "ul", str(raw)],
                           check=True)
            write_rtp_pcap(raw.read_bytes(), path)
        return path

    def render(self, dtmf_delay_ms: int, digits: dict[str, str]) -> str:
        scenario = (resources.files("hub.dev") / "phones.xml").read_text()
        scenario = scenario.replace("__RTP_PORT__", str(self.rtp_port))
        scenario = scenario.replace("__GREETING_PCAP__", str(self.greeting()))
        scenario = scenario.replace("__DTMF_DELAY_MS__", str(dtmf_delay_ms))
        for name, default in BEHAVIOURS.items():
            old = f'[+0-9]*{default}@" search_in="msg" check_it="false" assign_to="{name}"'
            new = f'[+0-9]*{digits.get(name, default)}@" search_in="msg" check_it="false" assign_to="{name}"'
            scenario = scenario.replace(old, new)
        return scenario

    def start(self, dtmf_delay_ms: int = 3000, *, stats_file: Path | None = None,
              **digits: str) -> None:
        """(Re)start SIPp, e.g. `start(busy="x")` to make every busy line free. With
        `stats_file`, SIPp writes its statistics there every second (-trace_stat)."""
        self.stop()
        path = self.workdir / "phones.xml"
        path.write_text(self.render(dtmf_delay_ms, digits))
        errors = self.workdir / "sipp-errors.log"
        self.proc = subprocess.Popen(
            ["sipp", "-sf", str(path), "-i", "127.0.0.1", "-p", str(self.sip_port),
             "-nostdin", "-trace_err", "-error_file", str(errors), "-max_socket", "4000",
             *(["-trace_msg", "-message_file", str(self._next_log())] if self.keep_log else []),
             *(["-trace_stat", "-stf", str(stats_file), "-fd", "1"] if stats_file else [])],
            cwd=self.workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.3)
        if self.proc.poll() is not None:
            raise PhonesError("sipp did not start: " + (errors.read_text() if errors.exists() else
                                                        f"is port {self.sip_port} taken?"))

    def _next_log(self) -> Path:
        self.logs.append(self.workdir / f"sip-messages-{len(self.logs)}.log")
        return self.logs[-1]

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None


class RtpCounter(asyncio.DatagramProtocol):
    """What the phones hear: RTP audio packets per stream (SSRC), with arrival times."""

    def __init__(self) -> None:
        self.streams: dict[int, list[float]] = {}
        self.transport: asyncio.DatagramTransport | None = None
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            self.port: int = s.getsockname()[1]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) < 12 or data[1] & 0x7F != 0:  # PCMU audio only, not DTMF events
            return
        ssrc = int.from_bytes(data[8:12], "big")
        self.streams.setdefault(ssrc, []).append(time.monotonic())

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.transport, _ = await loop.create_datagram_endpoint(
            lambda: self, local_addr=("127.0.0.1", self.port))

    def stop(self) -> None:
        if self.transport:
            self.transport.close()

    def summary(self) -> list[tuple[int, float]]:
        """(packets, seconds from first to last) per stream."""
        return [(len(t), t[-1] - t[0]) for t in self.streams.values() if t]
