"""The worker's job loop (hub.jobs.jobloop): a job RQ gives up on stops for real."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from rq.timeouts import JobTimeoutException, UnixSignalDeathPenalty

from hub.config import Settings
from hub.jobs.jobloop import JobLoop, Shared


def test_a_job_rq_times_out_is_cancelled_in_the_job_loop(settings: Settings) -> None:
    """RQ's timeout (SIGALRM in the worker's main thread, exactly as SimpleWorker arms it)
    interrupts the wait for the job; the coroutine in the loop's thread must stop too, or
    it would go on sending after RQ has failed the job and the reconciler re-queued it."""
    jobs = JobLoop(settings)
    ticks: list[float] = []
    cancelled = threading.Event()

    async def endless(shared: Shared) -> None:
        try:
            while True:
                ticks.append(time.monotonic())
                await asyncio.sleep(0.02)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    try:
        with pytest.raises(JobTimeoutException), UnixSignalDeathPenalty(1, JobTimeoutException):
            jobs.run(endless)
        assert cancelled.wait(2), "the coroutine was not cancelled"
        stopped_at = len(ticks)
        time.sleep(0.2)
        assert len(ticks) == stopped_at, "the job went on running after RQ gave it up"

        async def answer(shared: Shared) -> int:
            return 42

        assert jobs.run(answer) == 42  # the loop serves the next job
    finally:
        asyncio.run_coroutine_threadsafe(jobs.close(), jobs.loop).result(5)
        jobs.loop.call_soon_threadsafe(jobs.loop.stop)
