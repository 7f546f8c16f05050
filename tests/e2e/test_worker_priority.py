"""`hub worker` runs below the API's CPU priority (HUB_WORKER_NICE), every thread of it,
including those started for its first job; the API and a bad setting are checked too."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hub.dev.smtp import SmtpSink
from tests.conftest import ROOT, Procs, base_env
from tests.e2e.test_email_flow import email
from tests.helpers import Api, free_port

pytestmark = pytest.mark.e2e


def niceness(pid: int) -> dict[str, int]:
    """{thread name: niceness} of every thread of the process (from /proc)."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        name, rest = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:]
        out[f"{name}#{tid}"] = int(rest.split()[16])  # field 19 of stat(5)
    return out


@pytest.mark.parametrize("setting", [None, "0", "19"])
async def test_every_worker_thread_runs_at_the_configured_niceness(
    setting: str | None, api: Api, email_transport: dict[str, Any],
    smtp_sink: tuple[int, SmtpSink], procs: Procs,
) -> None:
    base = os.getpriority(os.PRIO_PROCESS, 0)
    env = {"HUB_WORKER_METRICS_PORT": str(free_port())}
    if setting is not None:
        env["HUB_WORKER_NICE"] = setting
    worker = procs.worker(**env)
    created = await api.submit(email(["a@example.com"]))
    done = await api.wait_status(created["sessionId"])
    assert done["counts"] == {"delivered": 1}
    # main (RQ), metrics server, reconciler, scheduler, webhook drain and, once a job
    # ran, the job loop and the threads its kicks use
    seen = niceness(worker.pid)
    want = max(base, 10 if setting is None else int(setting))
    assert len(seen) >= 6 and set(seen.values()) == {want}, seen


def test_the_api_keeps_its_priority(procs: Procs) -> None:
    api = procs.api(free_port(), HUB_WORKER_NICE="19")
    assert set(niceness(api.pid).values()) == {os.getpriority(os.PRIO_PROCESS, 0)}


@pytest.mark.parametrize("bad", ["-5", "20", "ten"])
def test_a_bad_niceness_is_refused_with_the_setting_named(bad: str) -> None:
    out = subprocess.run([sys.executable, "-m", "hub.cli.main", "worker", "--burst"],
                         cwd=ROOT, env=base_env(HUB_WORKER_NICE=bad), capture_output=True,
                         text=True, timeout=60)
    assert out.returncode != 0
    assert "HUB_WORKER_NICE" in out.stderr and "Traceback" not in out.stderr, out.stderr
