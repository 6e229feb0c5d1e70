"""Fetching a document (a certificate of analysis) from a caller-supplied https URL.

The caller chooses the URL, so the fetch must not become a way to probe the server's own
network (SSRF): only https, only hosts that resolve to public addresses (unless allowed by
setting), the connection made to the very address that was checked (no second DNS lookup an
attacker could answer differently), redirects followed by hand and checked the same way, a
bounded size and a timeout. It runs in a worker thread; callers await :func:`fetch`.
"""

from __future__ import annotations

import asyncio
import http.client
import ipaddress
import socket
import ssl
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

from seedline_server.domain.errors import (
    DependencyUnavailable,
    FieldViolation,
    InvalidArgument,
    RemoteRejected,
)

MAX_REDIRECTS = 3
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


@dataclass(frozen=True)
class FetchPolicy:
    """Limits of a fetch.

    Attributes:
        max_bytes: the largest document accepted.
        timeout: seconds for connecting and for each read.
        allow_private: accept hosts on private, loopback or link-local addresses.
        context: TLS context (None: the system's default trust store, hostname checked).
        prefix: bytes the document must start with (``%PDF-`` for a PDF), or empty.

    """

    max_bytes: int
    timeout: float = 15.0
    allow_private: bool = False
    context: ssl.SSLContext | None = None
    prefix: bytes = b"%PDF-"


@dataclass(frozen=True)
class Fetched:
    """A fetched document."""

    data: bytes
    content_type: str
    url: str


def _bad_url(field: str, why: str) -> InvalidArgument:
    return InvalidArgument(f"{field}: {why}", [FieldViolation(field, why)])


def _public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def _resolve(host: str, port: int, policy: FetchPolicy, field: str) -> str:
    """The address to connect to; refuses names that reach a non-public address."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise DependencyUnavailable(f"cannot resolve {host}: {exc}") from exc
    addresses = [str(info[4][0]) for info in infos]
    if not addresses:
        raise DependencyUnavailable(f"{host} has no address")
    if not policy.allow_private:
        blocked = [a for a in addresses if not _public(a)]
        if blocked:
            raise _bad_url(
                field, f"{host} resolves to a non-public address ({blocked[0]}); use a public https URL"
            )
    return addresses[0]


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """An HTTPS connection to a given address, with SNI and certificate checks for ``host``."""

    def __init__(self, host: str, port: int, address: str, timeout: float, context: ssl.SSLContext) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self._address = address
        self._tls = context

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._tls.wrap_socket(sock, server_hostname=self.host)


def fetch_sync(url: str, policy: FetchPolicy, field: str = "uri") -> Fetched:
    """Fetch ``url`` under ``policy`` (blocking)."""
    context = policy.context or ssl.create_default_context()
    current = url
    for _ in range(MAX_REDIRECTS + 1):
        parts = urlsplit(current)
        if parts.scheme != "https" or not parts.hostname:
            raise _bad_url(field, f"{current!r} is not an https URL")
        port = parts.port or 443
        address = _resolve(parts.hostname, port, policy, field)
        conn = _PinnedHTTPSConnection(parts.hostname, port, address, policy.timeout, context)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        try:
            conn.request("GET", target, headers={"Accept": "application/pdf", "User-Agent": "seedline"})
            response = conn.getresponse()
            if response.status in _REDIRECTS:
                location = response.getheader("Location")
                if not location:
                    raise RemoteRejected(f"{current} redirected without a Location")
                current = urljoin(current, location)
                continue
            if response.status != 200:
                raise RemoteRejected(
                    f"{current} answered HTTP {response.status} {response.reason}",
                    metadata={"http_status": str(response.status)},
                )
            length = response.getheader("Content-Length")
            if length and length.isdigit() and int(length) > policy.max_bytes:
                raise RemoteRejected(f"the document is {length} bytes, more than {policy.max_bytes}")
            data = response.read(policy.max_bytes + 1)
            content_type = (response.getheader("Content-Type") or "").split(";", 1)[0].strip()
        except (OSError, http.client.HTTPException) as exc:
            raise DependencyUnavailable(f"fetching {current} failed: {exc}") from exc
        finally:
            conn.close()
        if len(data) > policy.max_bytes:
            raise RemoteRejected(f"the document is larger than {policy.max_bytes} bytes")
        if policy.prefix and not data.startswith(policy.prefix):
            raise RemoteRejected(
                f"the document at {current} is not a PDF (it does not start with {policy.prefix!r})",
                metadata={"content_type": content_type},
            )
        return Fetched(data, content_type, current)
    raise RemoteRejected(f"{url} redirected more than {MAX_REDIRECTS} times")


async def fetch(url: str, policy: FetchPolicy, field: str = "uri") -> Fetched:
    """Fetch ``url`` under ``policy`` in a worker thread."""
    return await asyncio.to_thread(fetch_sync, url, policy, field)
