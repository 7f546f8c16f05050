"""The trust boundary for outbound connections (DESIGN §3).

Every destination an API-key holder supplies (`webhookUrl`, `fileUrl`, media and
attachment URLs, and every host or URL of an app-registered transport) goes through one
`Guard`: private, loopback, link-local, multicast, unspecified and reserved addresses are
refused, including IPv4 addresses embedded in IPv6 (IPv4-mapped and -compatible, NAT64,
6to4, Teredo) and odd IPv4 spellings (`127.1`, `0x7f000001`, `2130706433`, `0177.0.0.1`),
unless `HUB_ALLOW_PRIVATE_URLS` is on or the operator trusts the host
(`HUB_TRUSTED_HOSTS`).

Where each check happens:
- `check_public_url` at submission and registration: the URL parsed fully (scheme,
  port, brackets) and IP-literal or `localhost` hosts refused;
- `GuardedResolver` at connect time for names (no DNS cache, so a re-resolution cannot
  slip past), `GuardedConnector` for IP literals (they bypass resolvers) on every
  request, hence on every redirect hop; `fetch` follows redirects by hand;
- `open_guarded_socket` for SMTP: resolve, check, connect to the checked address.

A refusal (`BlockedURL`) never says what a name resolved to, or whether it resolved:
"not an allowed destination". Error texts never carry URL credentials or queries
(`scrub`, `shown_url`).

    FetchError            a fetch failed (status, size, type, time, connection)
     └── BlockedURL       the destination is refused (never retried)
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import ResolveResult
from aiohttp.resolver import ThreadedResolver
from yarl import URL

from hub.constants import MAX_REDIRECTS

if TYPE_CHECKING:
    from aiohttp.client_reqrep import ClientRequest
    from aiohttp.connector import Connection
    from aiohttp.tracing import Trace

    from hub.config import Settings

IP = ipaddress.IPv4Address | ipaddress.IPv6Address
NOT_ALLOWED = "not an allowed destination"
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")
_HOST_NAME = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,252})$")
_NO_SUCH_NAME = {getattr(socket, n) for n in ("EAI_NONAME", "EAI_NODATA") if hasattr(socket, n)}


class FetchError(Exception):
    """A fetch failed: status, size, type or time limit. The message says which.

    `transient`: another try later may succeed (timeout, connection trouble, HTTP 5xx,
    408, 429); otherwise the content is unusable as given (4xx, type, size, redirects).
    """

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class BlockedURL(FetchError):
    """The destination is refused by the guard, or the URL is not a usable http(s) URL."""

    def __init__(self, message: str) -> None:
        super().__init__(message, transient=False)


# ---------------------------------------------------------------------------- addresses

def parse_ip(host: str) -> IP | None:
    """The address an IP-literal host means, or None for a name.

    IPv4 is read as the C library's `inet_aton` reads it (what `getaddrinfo` and so any
    connection would do), so `127.1`, `0x7f000001`, `2130706433` and `0177.0.0.1` are all
    127.0.0.1. IPv6 may carry brackets and a zone (`fe80::1%eth0`).
    """
    text = host.strip().removeprefix("[").removesuffix("]").split("%", 1)[0]
    if ":" in text:
        try:
            return ipaddress.IPv6Address(text)
        except ValueError:
            return None
    text = text.rstrip(".")
    if not text or not all(c.isalnum() or c == "." for c in text) or not text[0].isdigit():
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(text))
    except OSError:
        return None


def _v4_allowed(ip: ipaddress.IPv4Address) -> bool:
    return ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_unspecified
                                 or ip.is_loopback or ip.is_link_local or ip.is_private)


def _embedded_v4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses an IPv6 address carries: mapped, compatible, NAT64, 6to4, Teredo."""
    found: list[ipaddress.IPv4Address] = []
    if ip.ipv4_mapped is not None:
        found.append(ip.ipv4_mapped)
    if ip.packed[:12] == bytes(12) or ip in _NAT64:  # ::a.b.c.d, 64:ff9b::a.b.c.d
        found.append(ipaddress.IPv4Address(ip.packed[12:]))
    if ip.sixtofour is not None:
        found.append(ip.sixtofour)
    if ip.teredo is not None:
        found.extend(ip.teredo)
    return found


def ip_allowed(ip: IP) -> bool:
    """Whether a public host may be reached at this address (no private forms)."""
    if isinstance(ip, ipaddress.IPv4Address):
        return _v4_allowed(ip)
    if ip in _NAT64_LOCAL or not all(_v4_allowed(v4) for v4 in _embedded_v4(ip)):
        return False
    return ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_unspecified
                                 or ip.is_loopback or ip.is_link_local or ip.is_site_local)


def address_allowed(host: str, allow_private: bool) -> bool:
    """Whether a numeric address (as a resolver returns it) may be reached."""
    if allow_private:
        return True
    ip = parse_ip(host)
    return ip is not None and ip_allowed(ip)


def _norm_host(host: str) -> str:
    host = host.strip().lower().removeprefix("[").removesuffix("]").rstrip(".")
    ip = parse_ip(host)
    return str(ip) if ip is not None else host


# ---------------------------------------------------------------------------- the guard

@dataclass(frozen=True)
class Guard:
    """The destination policy: private addresses off unless allowed; trusted hosts pass.

    `trusted` holds host names (lower case, no trailing dot) and normalised IP addresses;
    a trusted name is reached wherever it resolves, a trusted IP however it is named.
    """

    allow_private: bool = False
    trusted: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def of(cls, settings: Settings) -> Guard:
        return cls(settings.allow_private_urls, trusted_hosts(settings.trusted_hosts))

    def trusts(self, host: str) -> bool:
        return self.allow_private or _norm_host(host) in self.trusted

    def address_ok(self, address: str) -> bool:
        """A resolved numeric address: allowed, or trusted by the operator."""
        ip = parse_ip(address)
        if ip is None:
            return False
        return self.allow_private or ip_allowed(ip) or str(ip) in self.trusted

    def host_problem(self, host: str) -> str | None:
        """Why a host is refused before any resolution, or None (names: at connect time)."""
        if self.trusts(host):
            return None
        ip = parse_ip(host)
        if ip is not None:
            return None if ip_allowed(ip) else NOT_ALLOWED
        name = host.lower().rstrip(".")
        if name == "localhost" or name.endswith(".localhost"):
            return NOT_ALLOWED
        return None

    def check_host(self, host: str) -> None:
        why = self.host_problem(host)
        if why:
            raise BlockedURL(f"{host}: {why}")


def trusted_hosts(value: str) -> frozenset[str]:
    """`HUB_TRUSTED_HOSTS`: comma-separated host names or IP addresses."""
    return frozenset(_norm_host(h) for h in value.split(",") if h.strip())


def as_guard(allow_private: Guard | bool) -> Guard:
    """A `Guard`, also from the plain `allow_private` flag that older callers pass."""
    return allow_private if isinstance(allow_private, Guard) else Guard(allow_private)


# ---------------------------------------------------------------------------- URLs

def check_public_url(url: str, guard: Guard, *, credentials: bool = True) -> str | None:
    """Why a caller-supplied URL is refused, or None: the one check used at submission,
    at registration and (through `check_url`) before every request.

    The URL must parse fully (http or https, a host, a port in 1-65535, IPv6 in
    brackets, no spaces or control characters); an IP-literal host (any spelling) must be
    an allowed address, `localhost` is refused; other names are checked when connecting.
    `credentials=False` also refuses `user:password@` (configs that are shown back).
    """
    if not isinstance(url, str) or any(ord(c) <= 0x20 or ord(c) == 0x7F for c in url):
        return "must be an http or https URL without spaces or control characters"
    try:
        parts = urlsplit(url)
        port = parts.port
        parsed = URL(url)
        host = parsed.raw_host
    except ValueError as exc:
        reason = "port must be 1-65535" if "Port" in str(exc) else "not a valid URL"
        return f"must be an http or https URL ({reason})"
    if parts.scheme.lower() not in ("http", "https") or parsed.scheme not in ("http", "https"):
        return "must be an http or https URL"
    if not host or not parts.hostname:
        return "must be an http or https URL with a host"
    if port is not None and not 1 <= port <= 65535:
        return "must be an http or https URL (port must be 1-65535)"
    if not credentials and (parts.username is not None or parts.password is not None):
        return "must not contain credentials (user:password@); use write-only fields"
    if ":" not in host and not _HOST_NAME.fullmatch(host):
        return "must be an http or https URL (not a valid host name)"
    if ":" in host and parse_ip(host) is None:
        return "must be an http or https URL (not a valid IPv6 address)"
    return guard.host_problem(host)


def check_host_name(host: str, guard: Guard) -> str | None:
    """Why a bare host (e.g. an SMTP server) is refused, or None: the same rules as a
    URL's host."""
    if not isinstance(host, str) or not host or any(c in host for c in "/?#@\\"):
        return "must be a host name or IP address"
    wrapped = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return check_public_url(f"http://{wrapped}/", guard)


def check_url(url: URL, allow_private: Guard | bool) -> None:
    """Raise `BlockedURL` unless the URL may be requested (checked again when connecting)."""
    why = check_public_url(str(url), as_guard(allow_private))
    if why:
        raise BlockedURL(f"{shown_url(str(url))}: {why}")


_URL_TOKEN = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")
_USERINFO = re.compile(r"^([^:]+://)[^?#@]*@")


def _bare(url: str) -> str:
    return re.split(r"[?#]", _USERINFO.sub(r"\1", url), maxsplit=1)[0]


def scrub(text: str) -> str:
    """Text whose URLs lost their credentials (`user:pass@`), queries and fragments."""
    return _URL_TOKEN.sub(lambda m: _bare(m.group(0)), text)


def shown_url(url: str) -> str:
    """The URL as errors and logs may show it: no credentials, query or fragment."""
    try:
        return str(URL(url).with_user(None).with_query(None).with_fragment(None))
    except (ValueError, TypeError):
        return "(unparsable URL)"


def without_credentials(url: str | None) -> str | None:
    """The URL with any `user:password@` removed (the rest as given)."""
    if not url or "@" not in url:
        return url
    try:
        return str(URL(url).with_user(None))
    except (ValueError, TypeError):
        return "(unparsable URL)"


def redact(text: str, *secrets: str | None) -> str:
    """`scrub`bed text with each secret (e.g. a Slack webhook URL) replaced."""
    for secret in secrets:
        if secret and len(secret) >= 3:
            text = text.replace(secret, "***").replace(shown_url(secret), "***")
    return scrub(text)


# ---------------------------------------------------------------------------- connecting

async def resolve_checked(guard: Guard, host: str, port: int,
                          family: socket.AddressFamily = socket.AF_UNSPEC
                          ) -> list[tuple[socket.AddressFamily, str]]:
    """(family, address) of `host` that the guard allows; `BlockedURL` if none.

    A name that does not exist is refused with the same words as one that resolves to
    private addresses, so that the answer tells nothing about internal names.
    """
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, family=family, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        if guard.trusts(host) or exc.errno not in _NO_SUCH_NAME:
            raise OSError(f"{host}: name resolution failed, try later") from None
        raise BlockedURL(f"{host}: {NOT_ALLOWED}") from None
    found: list[tuple[socket.AddressFamily, str]] = [
        (fam, str(addr[0])) for fam, _, _, _, addr in infos]
    if guard.trusts(host):
        return found
    allowed = [(fam, a) for fam, a in found if guard.address_ok(a)]
    if not allowed:
        raise BlockedURL(f"{host}: {NOT_ALLOWED}")
    return allowed


class GuardedResolver(ThreadedResolver):
    """Resolves names and drops every address the guard does not allow."""

    def __init__(self, allow_private: Guard | bool) -> None:
        super().__init__()
        self._guard = as_guard(allow_private)

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if self._guard.trusts(host):
            return await super().resolve(host, port, family)
        try:
            found = await super().resolve(host, port, family)
        except socket.gaierror as exc:
            if exc.errno in _NO_SUCH_NAME:
                raise BlockedURL(f"{host}: {NOT_ALLOWED}") from None
            raise OSError(f"{host}: name resolution failed, try later") from None
        allowed = [r for r in found if self._guard.address_ok(r["host"])]
        if not allowed:
            raise BlockedURL(f"{host}: {NOT_ALLOWED}")
        return allowed


class GuardedConnector(aiohttp.TCPConnector):
    """A connector that checks every request's host before connecting (IP literals skip
    the resolver) and resolves names through `GuardedResolver`. aiohttp asks it for a
    connection on every request, including every redirect hop."""

    def __init__(self, allow_private: Guard | bool, **kwargs: Any) -> None:
        guard = as_guard(allow_private)
        super().__init__(resolver=GuardedResolver(guard), use_dns_cache=False, **kwargs)
        self._guard = guard

    async def connect(self, req: ClientRequest, traces: list[Trace],
                      timeout: aiohttp.ClientTimeout) -> Connection:
        if req.url.scheme not in ("http", "https"):
            raise BlockedURL(f"{shown_url(str(req.url))}: only http and https URLs are allowed")
        self._guard.check_host(req.url.raw_host or "")
        return await super().connect(req, traces, timeout)


def guarded_session(allow_private: Guard | bool, **kwargs: Any) -> aiohttp.ClientSession:
    """A client session whose connections can only reach allowed addresses."""
    return aiohttp.ClientSession(connector=GuardedConnector(allow_private, limit=100), **kwargs)


async def open_guarded_socket(guard: Guard, host: str, port: int,
                              timeout_s: float | None) -> socket.socket:
    """A TCP socket connected to an allowed address of `host` (checked before
    connecting); the caller keeps `host` for TLS/SNI. `BlockedURL` when refused."""
    why = check_host_name(host, guard)
    if why:
        raise BlockedURL(f"{host}: {why}")
    loop = asyncio.get_running_loop()
    last: OSError | None = None
    for family, address in await resolve_checked(guard, host.strip("[]"), port):
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await asyncio.wait_for(loop.sock_connect(sock, (address, port)), timeout_s)
            return sock
        except (OSError, TimeoutError) as exc:
            sock.close()
            last = exc if isinstance(exc, OSError) else OSError(f"{host}: connect timed out")
    raise OSError(f"{host} port {port}: connection failed ({last or 'no address'})")


# ---------------------------------------------------------------------------- fetching

@dataclass(frozen=True)
class Fetched:
    body: bytes
    content_type: str
    url: str


async def fetch(
    session: aiohttp.ClientSession,
    url: str,
    *,
    allow_private: Guard | bool,
    max_bytes: int,
    timeout_s: float,
    accept: tuple[str, ...] = (),
) -> Fetched:
    """GET with redirects checked hop by hop, a size cap and a total time limit.

    Raises only `FetchError` (`BlockedURL` for a refused destination, at any hop);
    messages show the URL without credentials or query.
    """
    shown = shown_url(url)
    try:
        return await _fetch(session, url, as_guard(allow_private), max_bytes, timeout_s,
                            accept, shown)
    except FetchError:
        raise
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        text = scrub(str(exc)) or ("no answer in time" if isinstance(exc, TimeoutError)
                                   else type(exc).__name__)
        raise FetchError(f"{shown}: {text}", transient=True) from None
    except (ValueError, UnicodeError) as exc:  # malformed URL or Location header
        raise FetchError(f"{shown}: not a usable URL ({type(exc).__name__})") from None


async def _fetch(session: aiohttp.ClientSession, url: str, guard: Guard, max_bytes: int,
                 timeout_s: float, accept: tuple[str, ...], shown: str) -> Fetched:
    target = URL(url)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    for _ in range(MAX_REDIRECTS + 1):
        check_url(target, guard)
        async with session.get(target, allow_redirects=False, timeout=timeout) as resp:
            if resp.status in (301, 302, 303, 307, 308) and "Location" in resp.headers:
                target = target.join(URL(resp.headers["Location"]))
                continue
            if resp.status != 200:
                raise FetchError(f"{shown}: HTTP {resp.status}",
                                 transient=resp.status >= 500 or resp.status in (408, 429))
            ctype = resp.headers.get("Content-Type", "").split(";")[0].strip().lower()
            if accept and not any(ctype.startswith(a) for a in accept):
                raise FetchError(f"{shown}: content type {ctype or 'missing'} not accepted")
            if (resp.content_length or 0) > max_bytes:
                raise FetchError(f"{shown}: larger than {max_bytes} bytes")
            body = bytearray()
            async for chunk in resp.content.iter_chunked(65536):
                body += chunk
                if len(body) > max_bytes:
                    raise FetchError(f"{shown}: larger than {max_bytes} bytes")
            return Fetched(bytes(body), ctype, str(target))
    raise FetchError(f"{shown}: more than {MAX_REDIRECTS} redirects")
