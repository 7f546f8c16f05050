"""JSON request bodies parsed strictly, before anything reads them.

What PostgreSQL or the JSON standard cannot hold is refused here with its location:
NaN/Infinity and numbers that overflow to infinity (400 `malformed-json`), nesting deeper
than `MAX_DEPTH` (400 `json-too-deep`), and NUL characters or lone surrogates in any string
or key (422 with the caller's error id: text columns and jsonb cannot store them).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from hub.errors import BadRequest, Unprocessable, detail

MAX_DEPTH = 64
MAX_DETAILS = 100
_BAD_TEXT = re.compile("[\x00\ud800-\udfff]")
# Only a \u escape can put a NUL or a surrogate into a decoded JSON string.
_SUSPECT_ESCAPE = re.compile(rb"\\u(?:0000|[dD][89a-fA-F])")
Loc = list[str | int]


class _NonFinite:
    """Stands in for NaN/Infinity while parsing, so that the walk can say where it was."""


_NON_FINITE = _NonFinite()


def _constant(_: str) -> _NonFinite:
    return _NON_FINITE


def _float(text: str) -> float | _NonFinite:
    value = float(text)
    return value if math.isfinite(value) else _NON_FINITE


def printable(text: str) -> str:
    """`text` with NUL and lone surrogates written as escapes (safe to echo in a location)."""
    return _BAD_TEXT.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def text_problem(text: str) -> str | None:
    found = _BAD_TEXT.search(text)
    if found is None:
        return None
    return "contains a NUL character" if found.group() == "\x00" else \
        "contains a lone surrogate (not valid Unicode)"


def loads(raw: bytes, error_id: str = "invalid-body") -> Any:
    """Parse a UTF-8 JSON document or raise a located `BadRequest`/`Unprocessable`."""
    try:
        doc = json.loads(raw.decode("utf-8"), parse_constant=_constant, parse_float=_float)
    except RecursionError:
        raise _too_deep([]) from None
    except ValueError as exc:  # includes UnicodeDecodeError and over-long integers
        raise BadRequest(f"the body is not valid JSON: {exc}", error_id="malformed-json",
                         details=[detail([], str(exc))]) from None
    _check(doc, check_text=_SUSPECT_ESCAPE.search(raw) is not None, error_id=error_id)
    return doc


def _too_deep(loc: Loc) -> BadRequest:
    return BadRequest(f"the body is nested deeper than {MAX_DEPTH} levels",
                      error_id="json-too-deep",
                      details=[detail(loc, f"nested deeper than {MAX_DEPTH} levels")])


def _check(doc: Any, *, check_text: bool, error_id: str) -> None:
    """One iterative walk: depth, non-finite numbers and (when an escape could have made
    one) bad characters, each reported at its location."""
    non_finite: list[dict[str, Any]] = []
    bad_text: list[dict[str, Any]] = []
    stack: list[tuple[Any, Loc]] = [(doc, [])]
    while stack:
        value, loc = stack.pop()
        if len(loc) > MAX_DEPTH:
            raise _too_deep(loc[:MAX_DEPTH + 1])
        if isinstance(value, dict):
            for key, item in value.items():
                if check_text and (why := text_problem(key)):
                    bad_text.append(detail([*loc, printable(key)], f"the key {why}"))
                stack.append((item, [*loc, printable(key) if check_text else key]))
        elif isinstance(value, list):
            stack.extend((item, [*loc, i]) for i, item in enumerate(value)
                         if check_text or type(item) in (dict, list, _NonFinite))
        elif value is _NON_FINITE:
            non_finite.append(detail(loc, "NaN and Infinity are not JSON numbers"))
        elif check_text and isinstance(value, str) and (why := text_problem(value)):
            bad_text.append(detail(loc, why))
    if non_finite:
        raise BadRequest("the body is not valid JSON: NaN, Infinity or a number too large for"
                         " a double", error_id="malformed-json",
                         details=sorted(non_finite, key=_order)[:MAX_DETAILS])
    if bad_text:
        found = sorted(bad_text, key=_order)[:MAX_DETAILS]
        raise Unprocessable("the request body contains characters that cannot be stored (NUL or"
                            f" lone surrogates), first at {'.'.join(map(str, found[0]['loc']))}",
                            error_id=error_id, details=found)


def _order(problem: dict[str, Any]) -> list[tuple[int, str]]:
    return [(0, f"{p:012d}") if isinstance(p, int) else (1, p) for p in problem["loc"]]
