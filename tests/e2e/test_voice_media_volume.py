"""`hub voice` whose media folder is a read-only volume: the session fails at once with
the filesystem's reason, before anyone is called, and the controller neither retries it
in a loop nor blames the database. No Asterisk is needed (the audio is prepared before
any call; the controller's ARI points at a port where nothing listens)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Procs
from tests.helpers import Api, free_port
from tests.mounts import tmpfs

pytestmark = pytest.mark.e2e


@pytest.mark.timeout(90)
async def test_a_read_only_media_volume_fails_the_session_with_its_reason(
    api: Api, procs: Procs, voice_transport: dict[str, Any], tmp_path: Path,
) -> None:
    with tmpfs(tmp_path / "media", read_only=True) as media:
        controller = procs.start("voice", HUB_MEDIA_DIR=str(media), HUB_VOICE_POLL_S="0.2",
                                 HUB_ARI_URL=f"http://127.0.0.1:{free_port()}")
        created = await api.submit({"transport": {"type": "voice", "message": "Hello."},
                                    "audience": ["+9779812345601"], "options": {"retries": 3}})
        done = await api.wait_status(created["sessionId"], ("completed", "failed"),
                                     timeout_s=20)
        [row] = (await api.deliveries(created["sessionId"])).values()
        assert done["counts"] == {"failed": 1}, done
        assert row["attempts"] == 0, row
        assert "Read-only file system" in row["error"] and str(media) in row["error"], row
        await asyncio.sleep(1.5)  # the controller goes on polling: nothing more happens
        assert controller.poll() is None, procs.logs()
    logs = procs.logs()
    assert "database unavailable" not in logs, logs
    assert logs.count("cannot be used") == 1, logs  # reported once, not retried
