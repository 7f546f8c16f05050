"""What the phones saw: calls read back from SIPp's message trace (`-trace_msg`), each
with the dialled number and when it began (INVITE) and ended (BYE, CANCEL or a final
failure answer). Tests use it to prove that no number was dialled while an earlier call
to it was live, and that no number was dialled more often than its attempts say."""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

_HEADER = re.compile(r"^-{10,} (\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d+)")
_INVITE = re.compile(r"^INVITE sip:([^@;>]+)@")
_FINAL_FAILURE = re.compile(r"^SIP/2\.0 ([3-6]\d\d) ")


@dataclass
class PhoneCall:
    number: str
    call_id: str
    start: float
    end: float | None = None


def _blocks(text: str) -> list[tuple[float, list[str]]]:
    found: list[tuple[float, list[str]]] = []
    for line in text.splitlines():
        header = _HEADER.match(line)
        if header:
            found.append((datetime.fromisoformat(header.group(1)).timestamp(), []))
        elif found:
            found[-1][1].append(line)
    return found


def calls(logs: list[Path]) -> list[PhoneCall]:
    """Every call the phones received, in order (over several SIPp runs' traces)."""
    by_id: dict[str, PhoneCall] = {}
    text = "\n".join(p.read_text(errors="replace") for p in logs if p.exists())
    for at, lines in _blocks(text):
        start = next((ln for ln in lines if ln and not ln.startswith("UDP message")), "")
        call_id = next((ln.split(":", 1)[1].strip() for ln in lines
                        if ln.lower().startswith("call-id:")), "")
        invite = _INVITE.match(start)
        if invite and call_id not in by_id:
            by_id[call_id] = PhoneCall(invite.group(1), call_id, at)
            continue
        call = by_id.get(call_id)
        if call is None or call.end is not None:
            continue
        if start.startswith(("BYE ", "CANCEL ")) or _FINAL_FAILURE.match(start):
            call.end = at
    return sorted(by_id.values(), key=lambda c: c.start)


def overlapping(found: list[PhoneCall]) -> list[tuple[PhoneCall, PhoneCall]]:
    """Pairs of calls to the same number where the second began before the first ended."""
    per_number: dict[str, list[PhoneCall]] = defaultdict(list)
    for call in found:
        per_number[call.number].append(call)
    pairs = []
    for same in per_number.values():
        for earlier, later in zip(same, same[1:], strict=False):
            if earlier.end is None or later.start < earlier.end:
                pairs.append((earlier, later))
    return pairs
