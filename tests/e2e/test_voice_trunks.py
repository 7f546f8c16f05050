"""Trunk behaviour seen from the phones (issue 9): a trunk answering 403 (expired
credentials, no credit) is a trunk failure, retried, never the callee's decline."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import Procs, TestPhones
from tests.e2e.test_voice import attempts, num, voice
from tests.e2e.test_voice_recovery import phones_saw_each_call_once
from tests.helpers import Api

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
