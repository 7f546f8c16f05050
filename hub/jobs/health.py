"""Whether a job's writes to PostgreSQL are getting through. While recording results or
renewing claims fails, senders wait: nothing new goes out whose result could not be kept."""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger(__name__)
BACKOFF_FIRST_S = 0.2
BACKOFF_MAX_S = 5.0


class Health:
    def __init__(self) -> None:
        self.ok = asyncio.Event()
        self.ok.set()
        self._failing: dict[str, int] = {}

    def failed(self, what: str, exc: BaseException) -> None:
        if what not in self._failing:
            log.warning("%s failed, sending paused until it works again: %s: %s",
                        what, type(exc).__name__, exc)
        self._failing[what] = self._failing.get(what, 0) + 1
        self.ok.clear()

    def recovered(self, what: str) -> None:
        if self._failing.pop(what, None) is not None:
            log.info("%s works again", what)
        if not self._failing:
            self.ok.set()

    async def backoff(self, what: str) -> None:
        """Sleep a little longer after each failure of `what` in a row."""
        tries = self._failing.get(what, 1)
        await asyncio.sleep(min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** min(tries - 1, 6)))
