"""The guard's address rules, one function for submission, registration and sending."""

from __future__ import annotations

import pytest

from hub.net import Guard, check_host_name, check_public_url, redact, scrub, trusted_hosts

GUARD = Guard()
REFUSED = ["127.0.0.1", "127.1", "0x7f000001", "2130706433", "0177.0.0.1", "0", "10.1.2.3",
           "100.64.0.1", "169.254.169.254", "192.168.0.1", "224.0.0.1", "240.0.0.1",
           "255.255.255.255", "[::]", "[::1]", "[fe80::1]", "[fc00::1]", "[ff02::1]",
           "[::ffff:127.0.0.1]", "[::ffff:7f00:1]", "[::ffff:10.0.0.1]", "[::7f00:1]",
           "[64:ff9b::7f00:1]", "[64:ff9b::a00:1]", "[64:ff9b:1::1]", "[2002:7f00:1::]",
           "[2002:a00:1::]", "[2001:0:4136:e378:8000:63bf:80ff:fffe]", "localhost",
           "LOCALHOST.", "api.localhost"]


@pytest.mark.parametrize("host", REFUSED)
def test_private_forms_are_refused_however_spelt(host: str) -> None:
    assert check_public_url(f"http://{host}:8080/x", GUARD) == "not an allowed destination"
    assert check_host_name(host, GUARD) == "not an allowed destination"
    assert check_public_url(f"http://{host}:8080/x", Guard(allow_private=True)) is None


@pytest.mark.parametrize("host", ["93.184.216.34", "[2606:2800:220:1:248:1893:25c8:1946]",
                                  "[2002:5db8:d822::1]", "example.com", "internal-svc.test"])
def test_public_addresses_and_names_pass_submission(host: str) -> None:
    """Names are checked when connecting (their addresses are not known before)."""
    assert check_public_url(f"https://{host}/x", GUARD) is None


def test_trusted_hosts_pass_by_name_or_address() -> None:
    guard = Guard(trusted=trusted_hosts(" Relay.Test. ,10.0.0.25"))
    assert check_host_name("relay.test", guard) is None
    assert check_public_url("http://10.0.0.25:25/", guard) is None
    assert check_public_url("http://012.0.0.031/", guard) is None  # 10.0.0.25, spelt oddly
    assert guard.address_ok("10.0.0.25") and not guard.address_ok("10.0.0.26")
    assert check_public_url("http://127.0.0.1/", guard) == "not an allowed destination"


@pytest.mark.parametrize("url", ["http://example.com:99999/a", "http://example.com:0/a",
                                 "http://[::1/", "ftp://example.com/", "http:///a",
                                 "http://a b/", "http://ex\nample.com/", "http://[zz::1]/"])
def test_malformed_urls_are_refused_before_the_address_check(url: str) -> None:
    why = check_public_url(url, Guard(allow_private=True))
    assert why is not None and why.startswith("must be an http or https URL"), why


def test_credentials_only_where_they_are_never_shown_back() -> None:
    assert check_public_url("https://u:p@example.com/a", GUARD) is None
    assert "credentials" in str(check_public_url("https://u:p@example.com/a", GUARD,
                                                 credentials=False))


def test_errors_lose_url_credentials_queries_and_secrets() -> None:
    text = "Connection timeout to host http://bob:pa55@h.example:81/p?sig=abc#frag (retry?)"
    assert scrub(text) == "Connection timeout to host http://h.example:81/p (retry?)"
    hook = "https://hooks.example.com/services/T0/B0/XSECRETX"
    assert "XSECRETX" not in redact(f"no hook at {hook}", hook)
