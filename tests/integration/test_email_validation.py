"""Email values that would inject headers are refused at validation (422), never stored."""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers import Api


def email(subject: str = "Hello", **extras: Any) -> dict[str, Any]:
    return {"transport": {"type": "email", "subject": subject, "message": "Body",
                          "extras": extras},
            "audience": ["a@example.com"]}


INJECTIONS = [
    (email("Hi\nthere"), ["transport", "subject"]),
    (email("Hi\r\nBcc: victim@example.com"), ["transport", "subject"]),
    (email("Hi\rthere"), ["transport", "subject"]),
    (email("Hi\x00there"), ["transport", "subject"]),
    (email(cc=["ok@example.com", "a@example.com\r\nBcc: victim@example.com"]),
     ["transport", "extras", "cc", 1]),
    (email(bcc="Boss\n <boss@example.com>"), ["transport", "extras", "bcc", 0]),
    (email(replyTo="office@example.com\nX-Evil: 1"), ["transport", "extras", "replyTo", 0]),
    (email(attachments=[{"url": "http://127.0.0.1/a.pdf", "filename": "a.pdf\r\nX-Evil: 1"}]),
     ["transport", "extras", "attachments", 0, "filename"]),
    (email(attachments=[{"url": "http://127.0.0.1/a.pdf", "filename": 7}]),
     ["transport", "extras", "attachments", 0, "filename"]),
]


@pytest.mark.parametrize(("body", "loc"), INJECTIONS)
async def test_header_injection_is_refused_with_its_location(
    api: Api, email_transport: dict[str, Any], db: Any, body: dict[str, Any], loc: list[Any]
) -> None:
    status, err = await api.post("/v1/sessions", body)
    assert status == 422, err
    assert err["error_id"] == "invalid-instruction"
    assert loc in [d["loc"] for d in err["details"]], err["details"]
    assert await db.fetchval("SELECT count(*) FROM sessions") == 0
    assert await db.fetchval("SELECT count(*) FROM deliveries") == 0


async def test_tab_in_a_subject_is_fine(api: Api, email_transport: dict[str, Any]) -> None:
    await api.submit(email("Agenda:\tQ3"))


async def test_every_injected_field_is_listed_in_one_answer(
    api: Api, email_transport: dict[str, Any]
) -> None:
    status, err = await api.post("/v1/sessions", email("a\nb", cc=["x@example.com\n"],
                                                       replyTo="y@example.com\r"))
    assert status == 422
    assert [d["loc"] for d in err["details"]] == [
        ["transport", "subject"], ["transport", "extras", "cc", 0],
        ["transport", "extras", "replyTo", 0]]
