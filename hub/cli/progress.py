"""Following a session: a live progress bar on a terminal, plain lines in a log.

On a TTY the line is redrawn in place (carriage return):
`[########------------] 12/40  30%  delivered=10 failed=2 in_progress=3  running  0:07`.
Elsewhere (a pipe, a file, CI) a plain line is printed when the progress changes, and at
least every `HEARTBEAT_S`. Following ends with one summary line; its exit code is 0 when
every recipient was delivered, 3 (`EXIT_FAILURES`) when some failed or were cancelled.
Ctrl-C stops following only: the session keeps running on the hub (exit 130)."""

from __future__ import annotations

import shutil
import time
from typing import Any, TextIO

from hub.cli.client import Client
from hub.cli.output import EXIT_FAILURES, EXIT_INTERRUPTED, EXIT_OK, CliError, counts_text

FINAL_SESSION = ("completed", "cancelled")
DONE_DELIVERY = ("delivered", "failed", "cancelled")
ORDER = ("delivered", "failed", "cancelled", "in_progress", "retry_scheduled", "pending")
BAR_WIDTH = 24
HEARTBEAT_S = 30.0


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def figures(session: dict[str, Any]) -> tuple[int, int, int]:
    """(done, total, percent) of a session's recipients."""
    counts = session.get("counts") or {}
    total = int(session.get("audienceCount") or 0)
    done = sum(int(counts.get(s, 0)) for s in DONE_DELIVERY)
    percent = 100 if total == 0 else min(100, done * 100 // total)
    return done, total, percent


def line(session: dict[str, Any], elapsed_s: float, *, bar: bool) -> str:
    done, total, percent = figures(session)
    counts = counts_text(session.get("counts") or {}, ORDER) or "no deliveries yet"
    head = ""
    if bar:
        filled = BAR_WIDTH * percent // 100
        head = "[" + "#" * filled + "-" * (BAR_WIDTH - filled) + "] "
    return (f"{head}{done}/{total} {percent:>3}%  {counts}  {session['status']}"
            f"  {_clock(elapsed_s)}")


def outcome_code(session: dict[str, Any]) -> int:
    counts = session.get("counts") or {}
    bad = int(counts.get("failed", 0)) + int(counts.get("cancelled", 0))
    return EXIT_FAILURES if bad or session["status"] == "cancelled" else EXIT_OK


class Progress:
    """Draws one session's progress on `stream` (None: draws nothing)."""

    def __init__(self, stream: TextIO | None, tty: bool) -> None:
        self.stream = stream
        self.tty = tty
        self.started = time.monotonic()
        self.last_plain = ""
        self.last_plain_at = 0.0
        self.drawn = False

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def update(self, session: dict[str, Any]) -> None:
        if self.stream is None:
            return
        if self.tty:
            width = max(20, shutil.get_terminal_size((100, 24)).columns - 1)
            text = line(session, self.elapsed(), bar=True)[:width]
            self.stream.write("\r" + text + "\x1b[K")
            self.drawn = True
        else:
            text = line(session, self.elapsed(), bar=False)
            key = text.rsplit("  ", 1)[0]  # without the clock
            now = time.monotonic()
            if key == self.last_plain and now - self.last_plain_at < HEARTBEAT_S:
                return
            self.last_plain, self.last_plain_at = key, now
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        """Ends a redrawn line, so that what follows starts on a line of its own."""
        if self.stream is not None and self.drawn:
            self.stream.write("\n")
            self.stream.flush()
            self.drawn = False

    def finish(self, session: dict[str, Any]) -> None:
        self.close()
        if self.stream is None:
            return
        done, total, _ = figures(session)
        counts = counts_text(session.get("counts") or {}, ORDER) or "no deliveries"
        self.stream.write(f"session {session['sessionId']} {session['status']} in"
                          f" {_clock(self.elapsed())}: {done}/{total} done, {counts}\n")
        self.stream.flush()


def follow(client: Client, session_id: str, progress: Progress, interval_s: float) -> dict[str, Any]:
    """Polls the session until it is final (or waits for a trigger) and returns it."""
    try:
        while True:
            session: dict[str, Any] = client.call("GET", f"/v1/sessions/{session_id}")
            progress.update(session)
            if session["status"] in FINAL_SESSION:
                progress.finish(session)
                return session
            if session["status"] == "awaiting_trigger":
                progress.close()
                return session
            time.sleep(interval_s)
    except KeyboardInterrupt:
        progress.close()
        raise CliError(f"stopped following session {session_id}; it keeps running"
                       f" (hub sessions show {session_id} --follow)", EXIT_INTERRUPTED) from None
    except CliError:
        progress.close()
        raise
