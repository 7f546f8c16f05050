"""Every URL field is parsed fully when it comes in (http(s) only, ports 1-65535, IPv6
brackets) and refused with its location; nothing is stored. These hold whatever
HUB_ALLOW_PRIVATE_URLS says (the shared `hub api` has it on); the address checks with the
guard on are in tests/e2e/test_trust_boundary.py."""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers import Api

BAD_URLS = ["http://example.com:99999/a.wav", "http://example.com:0/a.wav", "http://[::1/a",
            "file:///etc/passwd", "gopher://example.com/x", "http:///a", "http://exa mple.com/",
            "javascript:alert(1)", "http://%31%32%37.0.0.1/"]


def submission(url: str) -> list[tuple[dict[str, Any], list[str | int]]]:
    """Instructions with `url` in each URL field, and where the refusal must point."""
    email = {"type": "email", "subject": "s", "message": "m"}
    return [
        ({"transport": {"type": "voice", "fileUrl": url}, "audience": ["+14155550101"]},
         ["transport", "fileUrl"]),
        ({"transport": {"type": "whatsapp", "message": "m", "extras": {"mediaUrl": url}},
          "audience": ["+14155550101"]}, ["transport", "extras", "mediaUrl"]),
        ({"transport": {"type": "sms", "message": "m",
                        "extras": {"mediaUrl": ["https://example.com/ok.png", url]}},
          "audience": ["+14155550101"]}, ["transport", "extras", "mediaUrl", 1]),
        ({"transport": {**email, "extras": {"attachments": [{"url": url}]}},
          "audience": ["a@example.com"]}, ["transport", "extras", "attachments", 0, "url"]),
        ({"transport": email, "audience": ["a@example.com"], "options": {"webhookUrl": url}},
         ["options", "webhookUrl"]),
    ]


@pytest.mark.parametrize("url", BAD_URLS)
async def test_bad_urls_are_refused_at_submission_with_their_location(api: Api, url: str
                                                                      ) -> None:
    for body, loc in submission(url):
        status, answer = await api.post("/v1/sessions", body)
        assert status == 422, (url, loc, answer)
        assert answer["error_id"] == "invalid-instruction"
        assert loc in [d["loc"] for d in answer["details"]], (url, answer)
    status, listed = await api.get("/v1/sessions")
    assert listed["items"] == []


def registrations(url: str) -> list[tuple[str, dict[str, Any], str]]:
    return [("api", {"url": url}, "url"),
            ("slack", {"webhookUrl": url}, "webhookUrl"),
            ("slack", {"token": "xoxb-0123456789", "baseUrl": url}, "baseUrl"),
            ("sms", {"accountSid": "AC" + "0" * 32, "authToken": "t0ken-123", "from": "+1415",
                     "baseUrl": url}, "baseUrl")]


@pytest.mark.parametrize("url", [*BAD_URLS, "http://user:pw@example.com/send"])
async def test_bad_urls_are_refused_at_registration_with_their_location(api: Api, url: str
                                                                        ) -> None:
    for type_, config, field in registrations(url):
        status, answer = await api.post("/v1/transports", {"name": "t", "type": type_,
                                                           "config": config})
        assert status == 422, (url, type_, answer)
        assert ["config", field] in [d["loc"] for d in answer["details"]], (url, answer)
    status, listed = await api.get("/v1/transports")
    assert listed["items"] == []


@pytest.mark.parametrize("host", ["", "exa mple.com", "relay.example.com:25", "a/b", "[::1"])
async def test_bad_smtp_hosts_are_refused_at_registration(api: Api, host: str) -> None:
    status, answer = await api.post("/v1/transports", {"name": "t", "type": "email", "config": {
        "host": host, "port": 25, "from": "hub@example.com"}})
    assert status == 422, (host, answer)
    assert ["config", "host"] in [d["loc"] for d in answer["details"]], answer
