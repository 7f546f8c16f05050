"""The hub's own X-Twilio-Signature check must accept exactly what the `twilio` library's
RequestValidator accepts (the reference), for form callbacks: the URL with or without its
port, repeated names, and any signature, forged, empty or not even ASCII."""

from __future__ import annotations

import pytest
from multidict import MultiDict
from twilio.request_validator import RequestValidator

from hub.transports import twilio_signature

TOKEN = "0123456789abcdef0123456789abcdef"
FORM = [("MessageSid", "SM" + "ab" * 16), ("AccountSid", "AC" + "cd" * 16),
        ("To", "+9779801234567"), ("From", "+14155550100"), ("MessageStatus", "delivered"),
        ("Body", "Namaste — नमस्ते"), ("MediaUrl0", "b"), ("MediaUrl0", "a")]
URLS = ["http://127.0.0.1:8080/v1/callbacks/twilio/x", "https://hub.example.com/v1/callbacks/x",
        "https://hub.example.com:443/v1/callbacks/x?q=1", "http://hub.example.com/v1/cb"]


def reference(token: str, url: str, pairs: list[tuple[str, str]], signature: str) -> bool:
    return bool(RequestValidator(token).validate(url, MultiDict(pairs), signature))


@pytest.mark.parametrize("url", URLS)
def test_accepts_and_refuses_what_the_library_does(url: str) -> None:
    library = RequestValidator(TOKEN)
    signed_as = {url, *(u for u in URLS if u != url)}
    candidates = {library.compute_signature(u, MultiDict(FORM)) for u in signed_as}
    candidates |= {library.compute_signature(url, MultiDict(FORM[:-1])),  # a value dropped
                   RequestValidator("another-token-0123").compute_signature(url, MultiDict(FORM)),
                   "", "not base64", "sïgnature", "\udcff"}
    with_port = url.replace("hub.example.com/", "hub.example.com:443/").replace(
        "http://hub.example.com:443/", "http://hub.example.com:80/")
    candidates.add(library.compute_signature(with_port, MultiDict(FORM)))
    outcomes = {sig: twilio_signature.valid(TOKEN, url, FORM, sig) for sig in candidates}
    assert outcomes == {sig: reference(TOKEN, url, FORM, sig) for sig in candidates}
    assert outcomes[library.compute_signature(url, MultiDict(FORM))] is True
    assert sum(outcomes.values()) >= 1 and not all(outcomes.values())

