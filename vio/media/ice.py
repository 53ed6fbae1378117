"""ICE configuration for the media server's peer connections.

Four things are fixed here (see DESIGN.md, "Media facts" and "Reaching real patients"):

* No public STUN default. aiortc falls back to a Google STUN server when
  ``RTCConfiguration.iceServers`` is ``None``, so :func:`rtc_configuration` always passes a
  list, empty unless servers are configured.
* The host addresses offered as ICE candidates are a setting. aioice gathers one host
  candidate per non-loopback interface address; :func:`announce_host_addresses` replaces that
  list process-wide, which is also how ``127.0.0.1`` can be offered at all.
* Every host socket is bound inside a UDP port range when one is set
  (:func:`use_port_range`): one port per participant and host address, since every
  participant's media shares one transport (max-bundle, rtcp-mux). The ports are tried in
  turn from just after the last one taken, so a port just freed is the last to be reused; when
  all are taken, a connection gathers no host candidate, and the router refuses it.
* Behind 1:1 NAT (a cloud VM) the server binds its private address and the offer shows the
  public one: :func:`offer_with_public_address` rewrites the host candidates of the server's
  own offer (and its ``c=``/``a=rtcp`` addresses) to the public address, or, keeping the
  private candidates, adds the public address as a server-reflexive candidate beside each.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Sequence
from urllib.parse import unquote

from aioice.candidate import candidate_foundation, candidate_priority
from aiortc import RTCConfiguration, RTCIceServer
from aiortc.rtcconfiguration import RTCBundlePolicy
from aiortc.rtcicetransport import parse_stun_turn_uri

from . import seams

__all__ = [
    "PortRange",
    "announce_host_addresses",
    "announced_host_addresses",
    "offer_with_public_address",
    "port_range",
    "rtc_configuration",
    "use_port_range",
]

_announced: tuple[str, ...] = ()
_port_range: PortRange | None = None


def _announced_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    """Stand-in for ``aioice.ice.get_host_addresses``: the announced addresses of each family."""
    return [
        address
        for address in _announced
        if (use_ipv6 if ipaddress.ip_address(address).version == 6 else use_ipv4)
    ]


def announce_host_addresses(addresses: Sequence[str]) -> None:
    """Gather ICE host candidates only on ``addresses`` (e.g. ``["127.0.0.1"]``).

    aioice decides which local addresses become host candidates in the module function
    ``aioice.ice.get_host_addresses``, which ``Connection.gather_candidates`` looks up on every
    gathering and which always leaves out loopback. There is no per-connection option for it
    in aiortc, so the restriction is installed by replacing that function
    (:func:`vio.media.seams.set_host_addresses_provider`), and therefore holds
    for every peer connection in the process: the server's and, in tests, the client peers'.
    That is intended: the addresses a host may use for media are a property of the host.

    Each address must be assigned to a local interface (aioice binds a UDP socket to it);
    addresses that cannot be bound are skipped by aioice with a log line. An empty list
    restores aioice's own behaviour (every non-loopback interface address).

    Raises ``ValueError`` for a string that is not an IP address.
    """
    global _announced
    parsed = tuple(str(ipaddress.ip_address(address.strip())) for address in addresses)
    _announced = parsed
    seams.set_host_addresses_provider(_announced_host_addresses if parsed else None)


def announced_host_addresses() -> tuple[str, ...]:
    """The addresses installed by :func:`announce_host_addresses` (empty: aioice's default)."""
    return _announced


def _ice_server(url: str) -> RTCIceServer:
    """Parse one ``stun:host[:port]`` or ``turn[s]:[user:pass@]host[:port][?transport=..]``."""
    scheme, sep, rest = url.strip().partition(":")
    if not sep:
        raise ValueError(f"ICE server URL {url!r} has no scheme")
    username: str | None = None
    credential: str | None = None
    if "@" in rest:
        userinfo, _, rest = rest.rpartition("@")
        user, colon, password = userinfo.partition(":")
        if scheme not in ("turn", "turns") or not colon or not user:
            raise ValueError(f"ICE server URL {url!r}: credentials must be turn:user:pass@host")
        username, credential = unquote(user), unquote(password)
    plain = f"{scheme}:{rest}"
    try:
        parse_stun_turn_uri(plain)
    except ValueError as exc:
        raise ValueError(f"ICE server URL {url!r} is malformed: {exc}") from exc
    return RTCIceServer(urls=plain, username=username, credential=credential)


def rtc_configuration(ice_servers: Sequence[str]) -> RTCConfiguration:
    """An ``RTCConfiguration`` with exactly ``ice_servers`` (possibly none) and max-bundle.

    ``iceServers`` is always a list so aiortc never adds its public STUN default. Bundle policy
    is max-bundle: all media of a participant share one transport (with aiortc's default a
    second audio track on one connection never sent a packet). aiortc uses at most one STUN and
    one TURN server; further entries are validated but ignored by aiortc.
    """
    return RTCConfiguration(
        iceServers=[_ice_server(url) for url in ice_servers],
        bundlePolicy=RTCBundlePolicy.MAX_BUNDLE,
    )


# --- the port range ---------------------------------------------------------------------------


class PortRange:
    """UDP ports ``first``..``last`` (both included), handed out in turn.

    :meth:`ports` yields every port of the range once, starting just after the port it
    yielded last; a bind that succeeds therefore leaves the next search starting after it.
    """

    def __init__(self, first: int, last: int) -> None:
        if not 1 <= first <= last <= 65535:
            raise ValueError(f"{first}-{last} is not a range of UDP ports")
        self.first = first
        self.last = last
        self._next = first

    def __len__(self) -> int:
        return self.last - self.first + 1

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.first <= port <= self.last

    def __repr__(self) -> str:
        return f"PortRange({self.first}, {self.last})"

    def ports(self) -> Iterator[int]:
        start = self._next
        for offset in range(len(self)):
            port = self.first + (start - self.first + offset) % len(self)
            self._next = self.first if port == self.last else port + 1
            yield port


def use_port_range(ports: Sequence[int]) -> None:
    """Bind every ICE host socket of the process inside ``(first, last)``; ``()``: any port.

    Installed with :func:`vio.media.seams.set_host_ports` (aioice has no option for it), so it
    holds for every peer connection in the process, like :func:`announce_host_addresses`.
    Raises ``ValueError`` for anything but ``()`` or two ports in order.
    """
    global _port_range
    if not ports:
        _port_range = None
        seams.set_host_ports(None)
        return
    if len(ports) != 2:
        raise ValueError("a port range is (first, last)")
    _port_range = PortRange(ports[0], ports[1])
    seams.set_host_ports(_port_range.ports)


def port_range() -> PortRange | None:
    """The range installed by :func:`use_port_range` (``None``: any port)."""
    return _port_range


# --- the public address -----------------------------------------------------------------------


def offer_with_public_address(sdp: str, public_address: str, *, keep_private: bool) -> str:
    """The server's own offer ``sdp`` as seen from outside a 1:1 NAT at ``public_address``.

    Each host candidate of the public address's IP version is shown at ``public_address``
    with its port unchanged (a 1:1 NAT keeps ports); the ``c=`` and ``a=rtcp`` addresses
    that name a rewritten address follow. With ``keep_private``, each such host candidate
    stays as it is and a server-reflexive candidate for the public address (related address:
    the private one) is added after it, for clients on the server's own network. Relay and
    other candidates, and candidates of the other IP version, are left alone.

    Raises ``ValueError`` when ``public_address`` is not an IP address.
    """
    public = ipaddress.ip_address(public_address)
    private: set[str] = set()
    lines = sdp.split("\r\n")
    out: list[str] = []
    for line in lines:
        if not line.startswith("a=candidate:"):
            out.append(line)
            continue
        fields = line[len("a=candidate:"):].split()
        if (len(fields) < 8 or fields[6] != "typ" or fields[7] != "host"
                or not _same_version(fields[4], public)):
            out.append(line)
            continue
        component, transport, host, port = fields[1], fields[2], fields[4], fields[5]
        private.add(str(ipaddress.ip_address(host)))
        if not keep_private:
            out.append(f"a=candidate:{' '.join([*fields[:4], str(public), *fields[5:]])}")
            continue
        out.append(line)
        reflexive = [
            candidate_foundation("srflx", transport.lower(), host),
            component,
            transport,
            str(candidate_priority(int(component), "srflx")),
            str(public),
            port,
            "typ",
            "srflx",
            "raddr",
            host,
            "rport",
            port,
        ]
        out.append(f"a=candidate:{' '.join(reflexive)}")
    return "\r\n".join(_connection_address(line, private, public) for line in out)


def _same_version(host: str, public: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    try:
        return ipaddress.ip_address(host).version == public.version
    except ValueError:  # an mDNS name or other host name
        return False


def _connection_address(
    line: str, private: set[str], public: ipaddress.IPv4Address | ipaddress.IPv6Address
) -> str:
    """``c=IN IP4 a`` or ``a=rtcp:port IN IP4 a`` with a private ``a`` shown at ``public``."""
    if not line.startswith(("c=", "a=rtcp:")):
        return line
    head, sep, address = line.rpartition(" ")
    if not sep or address not in private or not head.endswith(f"IP{public.version}"):
        return line
    return f"{head} {public}"
