"""Write an RTP stream (PCMU, 20 ms frames) as a pcap file that SIPp's
`play_pcap_audio` can play: the SIPp phones use it to sound like an answering machine."""

from __future__ import annotations

import struct
from pathlib import Path

FRAME_BYTES = 160          # 20 ms of 8 kHz mu-law
PCAP_HEADER = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)  # Ethernet


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    result: int = ~total & 0xFFFF
    return result


def _packet(payload: bytes, seq: int, timestamp: int) -> bytes:
    rtp = struct.pack("!BBHII", 0x80, 0, seq & 0xFFFF, timestamp & 0xFFFFFFFF, 0x48554221)
    udp_body = rtp + payload
    udp = struct.pack("!HHHH", 6000, 6002, 8 + len(udp_body), 0) + udp_body
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), seq & 0xFFFF, 0, 64, 17, 0,
                     bytes([127, 0, 0, 1]), bytes([127, 0, 0, 1]))
    ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    return b"\0" * 12 + b"\x08\x00" + ip + udp


def write_rtp_pcap(ulaw: bytes, path: Path) -> None:
    """`ulaw`: raw 8 kHz mu-law samples; one RTP packet per 20 ms."""
    out = bytearray(PCAP_HEADER)
    for seq, offset in enumerate(range(0, len(ulaw) - FRAME_BYTES + 1, FRAME_BYTES)):
        frame = _packet(ulaw[offset:offset + FRAME_BYTES], seq, seq * FRAME_BYTES)
        micros = seq * 20_000
        out += struct.pack("<IIII", micros // 1_000_000, micros % 1_000_000, len(frame), len(frame))
        out += frame
    path.write_bytes(bytes(out))
