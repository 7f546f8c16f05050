"""Trunk behaviour seen from the phones (issue 9): a trunk answering 403 (expired
credentials, no credit) is a trunk failure, retried, never the callee's decline."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from hub.dev import siplog
from tests.conftest import Procs, TestPhones
from tests.e2e.test_voice import attempts, num, voice
from tests.e2e.test_voice_recovery import phones_saw_each_call_once
from tests.helpers import Api, eventually

pytestmark = pytest.mark.e2e


async def test_a_trunk_answering_403_is_a_trunk_failure_and_retried(
    api: Api, voice_transport: dict[str, Any], phones: TestPhones, procs: Procs,
) -> None:
    phones.start(forbidden="0")
    procs.start("voice")
    created = await api.submit(voice([num(10), num(15)], message="Camp on Friday", retries=1,
                                     retryIntervalMinutes="0.02"))
    sid = created["sessionId"]
    done = await api.wait_status(sid, timeout_s=60)
    assert done["counts"] == {"failed": 2}, done["counts"]
    forbidden = await attempts(api, sid, num(10))
    assert len(forbidden) == 2, forbidden  # retried: a trunk problem, not a decline
    for attempt in forbidden:
        assert attempt["outcome"] == "failed" and attempt["detail"]["sipCode"] == 403, attempt
        assert attempt["detail"].get("trunkProblem") is True, attempt
    declined = await attempts(api, sid, num(15))
    assert [a["outcome"] for a in declined] == ["rejected"]  # 603: the callee's decline
    await phones_saw_each_call_once(api, phones, sid)


def _hhmm(at: datetime) -> str:
    return at.strftime("%H:%M")


async def test_overnight_windows_wrap_midnight(
    api: Api, phones: TestPhones, procs: Procs,
) -> None:
    """Two trunks with windows that wrap midnight in the callee's zone: one open now (the
    call is placed), one closed now (deferred to its opening, no attempt spent)."""
    local = datetime.now(UTC).astimezone(ZoneInfo("Asia/Kathmandu"))
    windows = {
        "open": {"start": _hhmm(local - timedelta(hours=1)),   # e.g. 11:00 → 10:00 next day
                 "end": _hhmm(local - timedelta(hours=2))},
        "closed": {"start": _hhmm(local + timedelta(hours=2)),  # e.g. 14:00 → 11:00 next day
                   "end": _hhmm(local - timedelta(hours=1))},
    }
    for name, window in windows.items():
        status, body = await api.post("/v1/transports", {"name": name, "type": "voice",
            "config": {"trunk": "trunk", "callingWindow": window, "timeZone": "UTC",
                       "ringTimeoutS": 5}})
        assert status == 201, body
    procs.start("voice")
    placed = await api.submit(voice([num(10)], message="Good night.",
                                    extras={"transport": "open"}))
    deferred = await api.submit(voice([num(20)], message="Not now.",
                                      extras={"transport": "closed"}))
    done = await api.wait_status(placed["sessionId"], timeout_s=40)
    assert done["counts"] == {"delivered": 1}

    async def waiting() -> dict[str, Any] | None:
        row = (await api.deliveries(deferred["sessionId"]))[num(20)]
        return row if row["nextAttemptAt"] else None
    row = await eventually(waiting, 20, "the closed window's call to be deferred")
    assert row["status"] == "retry_scheduled" and row["attempts"] == 0
    opens = datetime.fromisoformat(row["nextAttemptAt"]).astimezone(local.tzinfo)
    assert _hhmm(opens) == windows["closed"]["start"]
    assert [c.number for c in siplog.calls(phones.phones.logs)] == [num(10)]
