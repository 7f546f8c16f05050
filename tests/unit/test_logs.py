"""A log record is one line whatever the caller put into it (issue 8: forged log lines)."""

from __future__ import annotations

import io
import logging

from hub.logs import FORMAT, SafeFormatter


def lines_of(*args: object, exc: BaseException | None = None) -> list[str]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(SafeFormatter(FORMAT))
    log = logging.getLogger("test-logs")
    log.addHandler(handler)
    log.propagate = False
    try:
        if exc is None:
            log.warning("request on %s from %s", *args)
        else:
            try:
                raise exc
            except type(exc):
                log.exception("unhandled error on %s", *args)
    finally:
        log.removeHandler(handler)
    return stream.getvalue().splitlines()


def test_control_characters_in_a_message_are_escaped() -> None:
    forged = "/v1/x\r\n2030-01-01 00:00:00,000 ERROR hub.api: admin key leaked\x1b[2J\u2028\ud800"
    lines = lines_of(forged, "\x00peer")
    assert len(lines) == 1
    assert "\\x0d\\x0a2030-01-01" in lines[0] and "\\x1b[2J" in lines[0]
    assert "\\u2028" in lines[0] and "\\ud800" in lines[0] and "\\x00peer" in lines[0]


def test_a_traceback_cannot_start_a_line_of_its_own() -> None:
    lines = lines_of("/p\n2030-01-01 forged", exc=ValueError("bad\n2030-01-01 ERROR forged\r"))
    assert lines[0].endswith("unhandled error on /p\\x0a2030-01-01 forged")
    assert all(line.startswith("    ") for line in lines[1:]), lines
    assert lines[-1].strip() == "2030-01-01 ERROR forged\\x0d"
