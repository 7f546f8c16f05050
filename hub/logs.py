"""Log lines that a caller cannot forge.

Messages carry caller-supplied text (paths, addresses, provider answers). `SafeFormatter`
writes every control character of a message (CR, LF, ESC, NUL, ...), the Unicode line and
paragraph separators and lone surrogates as escapes, so one record is always one line.
A traceback keeps its own line breaks, but each of its lines is indented: only the first
line of a record starts at the margin, where the timestamp is.
"""

from __future__ import annotations

import logging
import re

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_UNSAFE_BUT_NEWLINE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape(text: str) -> str:
    """`text` on one line: control characters and line separators as `\\xNN`/`\\uNNNN`."""
    return _UNSAFE.sub(_escape, text)


class SafeFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        cached = record.exc_text
        if record.exc_info:
            record.exc_text = None  # another handler's formatter may have cached it raw
        try:
            return super().format(record)
        finally:
            record.exc_text = cached

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        record.message = escape(record.message)
        return super().formatMessage(record)

    def formatException(self, ei: logging._SysExcInfoType) -> str:  # noqa: N802
        return self._indented(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:  # noqa: N802
        return self._indented(super().formatStack(stack_info))

    @staticmethod
    def _indented(text: str) -> str:
        return "\n".join("    " + line for line in _UNSAFE_BUT_NEWLINE.sub(_escape, text).split("\n"))


def configure(level: str | int) -> None:
    """The root logger writes one safe line per record to stderr."""
    handler = logging.StreamHandler()
    handler.setFormatter(SafeFormatter(FORMAT))
    logging.basicConfig(level=level, handlers=[handler])
