"""The SSRF guard: where a URL that came from outside may make the connector connect.

A manager's attachment URL (from an amoCRM webhook) or a file link in a messenger's event may
point anywhere, the connector's own network and the cloud's metadata service included.
:class:`UrlGuard` allows http(s) only, resolves the host once and refuses when any address it
resolves to is not public: private, loopback, link-local, multicast, reserved, unspecified,
shared (CGNAT) or a cloud metadata address, IPv4 addresses inside IPv6 forms included.
:meth:`UrlGuard.request` then builds a request to the checked address itself (with the original
``Host`` header and TLS server name), so DNS rebinding between the check and the connect does not
work. ``[http] media_allow_networks`` lists networks allowed despite the guard (tests, the sandbox).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass

import anyio
import httpx

from .errors import ConfigError, MessengerError, UnsafeURL

__all__ = ["METADATA_ADDRESSES", "Resolver", "UrlGuard", "parse_networks", "refusal", "shown", "system_resolver"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]
"""``(host, port)`` → the addresses the host resolves to; raises :class:`OSError` when it does not."""

METADATA_ADDRESSES = frozenset(ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254"))
"""Cloud instance metadata services: refused even inside ``media_allow_networks``."""
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


async def system_resolver(host: str, port: int) -> list[str]:
    """The addresses ``host`` resolves to, through the system's resolver (``getaddrinfo``)."""
    infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def parse_networks(cidrs: Iterable[str], where: str = "http.media_allow_networks") -> tuple[Network, ...]:
    """Networks from CIDR texts (``10.0.0.0/8``, ``::1/128``, a bare address); :class:`ConfigError` names a bad one."""
    networks = []
    for index, text in enumerate(cidrs):
        try:
            networks.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise ConfigError(f"{where}[{index}] {text!r} is not a network like '10.0.0.0/8' or '::1/128'") from None
    return tuple(networks)


def _embedded(address: IPAddress) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 form carries (mapped, 6to4, Teredo, NAT64): where it really leads."""
    if not isinstance(address, ipaddress.IPv6Address):
        return []
    if address.ipv4_mapped is not None:
        return [address.ipv4_mapped]
    if address.sixtofour is not None:
        return [address.sixtofour]
    if address.teredo is not None:
        return list(address.teredo)
    if address in _NAT64:
        return [ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)]
    return []


def _kind(address: IPAddress) -> str | None:
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if address.is_multicast:
        return "multicast"
    if address in _CGNAT:
        return "shared (CGNAT)"
    if address.is_reserved:
        return "reserved"
    if address.is_private:
        return "private"
    if not address.is_global:
        return "not public"
    return None


def refusal(address: str | IPAddress, allow: Sequence[Network] = ()) -> str | None:
    """Why the connector must not connect to ``address`` (``"a loopback address"``), or ``None`` when it may.

    An IPv6 form of an IPv4 address is judged by the IPv4 address it leads to.
    """
    raw = ipaddress.ip_address(address.split("%", 1)[0]) if isinstance(address, str) else address
    embedded = _embedded(raw)
    if any(form in METADATA_ADDRESSES for form in (raw, *embedded)):
        return "a cloud metadata address"
    if any(form in network for form in (raw, *embedded) for network in allow if form.version == network.version):
        return None
    judged: list[IPAddress] = [*embedded] or [raw]
    for form in judged:
        kind = _kind(form)
        if kind is not None:
            return f"a {kind} address" if form is raw else f"an IPv6 form of the {kind} address {form}"
    return None


def shown(url: httpx.URL) -> str:
    """A URL as errors and logs show it: scheme and host only (paths and queries may carry tokens)."""
    return f"{url.scheme}://{url.host}"


@dataclass(frozen=True)
class UrlGuard:
    """Checks and pins requests to URLs that came from outside."""

    allow: tuple[Network, ...] = ()
    """Networks allowed despite the guard (``[http] media_allow_networks``); never the metadata addresses."""
    resolver: Resolver = system_resolver
    """DNS; tests give one that knows their fake hosts."""
    max_redirects: int = 3
    """Redirects followed by hand, each hop checked again."""

    async def check(self, url: httpx.URL) -> str:
        """The one address to connect to for ``url``; :class:`UnsafeURL` when the guard refuses it.

        A host that does not resolve is a retryable :class:`MessengerError` (DNS may answer later).
        """
        if url.scheme not in ("http", "https"):
            raise UnsafeURL(f"the URL {str(url)[:60]!r} is not http(s); only http and https are fetched")
        host = url.raw_host.decode("ascii")
        if not host:
            raise UnsafeURL(f"the URL {str(url)[:60]!r} names no host")
        try:
            addresses = list(await self.resolver(host, url.port or (443 if url.scheme == "https" else 80)))
        except OSError as exc:
            raise MessengerError(f"{shown(url)} does not resolve: {exc.strerror or exc}", retryable=True) from None
        if not addresses:
            raise MessengerError(f"{shown(url)} resolves to no address", retryable=True)
        for address in addresses:
            why = refusal(address, self.allow)
            if why is not None:
                raise UnsafeURL(
                    f"{shown(url)} resolves to {address}, {why}: the connector does not fetch from there "
                    "(list the network in [http] media_allow_networks if it is meant to be reached)"
                )
        return addresses[0]

    async def request(self, http: httpx.AsyncClient, url: httpx.URL, *, http_timeout: float) -> httpx.Request:
        """A GET of ``url`` sent to the address the guard checked, with ``url``'s Host header and TLS name."""
        address = await self.check(url)
        extensions = {"sni_hostname": url.raw_host.decode("ascii")} if url.scheme == "https" else None
        return http.build_request(
            "GET",
            url.copy_with(host=address),
            headers={"Host": url.netloc.decode("ascii")},
            timeout=http_timeout,
            extensions=extensions,
        )
