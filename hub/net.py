"""Outbound HTTP for URLs that come from API callers (webhooks, media, attachments).

Private, loopback and link-local targets are refused unless `HUB_ALLOW_PRIVATE_URLS` is
on. Hostnames are checked in the resolver (no DNS cache, so a re-resolution cannot slip
past), IP-literal hosts are checked before connecting (they bypass the resolver), and
redirects are followed by hand so that every hop is checked again. Every fetch has a
size and a time limit.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp.abc import ResolveResult
from aiohttp.resolver import ThreadedResolver
from yarl import URL

from hub.constants import MAX_REDIRECTS


class BlockedURL(Exception):
    """The URL's host is not allowed (private address) or the URL is not http(s)."""


class FetchError(Exception):
    """A fetch failed: status, size, type or time limit. The message says which.

    `transient`: another try later may succeed (timeout, connection trouble, HTTP 5xx,
    408, 429); otherwise the content is unusable as given (4xx, type, size, redirects).
    """

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


def address_allowed(host: str, allow_private: bool) -> bool:
    if allow_private:
        return True
    ip = ipaddress.ip_address(host.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


class GuardedResolver(ThreadedResolver):
    """Resolves names and drops every address the policy does not allow."""

    def __init__(self, allow_private: bool) -> None:
        super().__init__()
        self._allow_private = allow_private

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await super().resolve(host, port, family)
        allowed = [r for r in found if address_allowed(r["host"], self._allow_private)]
        if not allowed:
            raise OSError(f"{host} resolves only to private addresses, which are not allowed")
        return allowed


def check_url(url: URL, allow_private: bool) -> None:
    if url.scheme not in ("http", "https") or not url.host:
        raise BlockedURL(f"{url}: only http and https URLs are allowed")
    try:
        ipaddress.ip_address(url.host)
    except ValueError:
        return  # a name: the resolver checks what it resolves to
    if not address_allowed(url.host, allow_private):
        raise BlockedURL(f"{url}: private addresses are not allowed")


def guarded_session(allow_private: bool, **kwargs: Any) -> aiohttp.ClientSession:
    """A client session whose connections can only reach allowed addresses."""
    connector = aiohttp.TCPConnector(
        resolver=GuardedResolver(allow_private), use_dns_cache=False, limit=100
    )
    return aiohttp.ClientSession(connector=connector, **kwargs)


@dataclass(frozen=True)
class Fetched:
    body: bytes
    content_type: str
    url: str


async def fetch(
    session: aiohttp.ClientSession,
    url: str,
    *,
    allow_private: bool,
    max_bytes: int,
    timeout_s: float,
    accept: tuple[str, ...] = (),
) -> Fetched:
    """GET with redirects checked hop by hop, a size cap and a total time limit."""
    target = URL(url)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    for _ in range(MAX_REDIRECTS + 1):
        check_url(target, allow_private)
        try:
            async with session.get(target, allow_redirects=False, timeout=timeout) as resp:
                if resp.status in (301, 302, 303, 307, 308) and "Location" in resp.headers:
                    target = target.join(URL(resp.headers["Location"]))
                    continue
                if resp.status != 200:
                    raise FetchError(f"{url}: HTTP {resp.status}",
                                     transient=resp.status >= 500 or resp.status in (408, 429))
                ctype = resp.headers.get("Content-Type", "").split(";")[0].strip().lower()
                if accept and not any(ctype.startswith(a) for a in accept):
                    raise FetchError(f"{url}: content type {ctype or 'missing'} not accepted")
                if (resp.content_length or 0) > max_bytes:
                    raise FetchError(f"{url}: larger than {max_bytes} bytes")
                body = bytearray()
                async for chunk in resp.content.iter_chunked(65536):
                    body += chunk
                    if len(body) > max_bytes:
                        raise FetchError(f"{url}: larger than {max_bytes} bytes")
                return Fetched(bytes(body), ctype, str(target))
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise FetchError(f"{url}: {exc or type(exc).__name__}", transient=True) from exc
    raise FetchError(f"{url}: more than {MAX_REDIRECTS} redirects")
