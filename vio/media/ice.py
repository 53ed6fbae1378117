"""ICE configuration for the media server's peer connections.

Two things are fixed here (see DESIGN.md, "Media facts"):

* No public STUN default. aiortc falls back to a Google STUN server when
  ``RTCConfiguration.iceServers`` is ``None``, so :func:`rtc_configuration` always passes a
  list, empty unless servers are configured.
* The host addresses offered as ICE candidates are a setting. aioice gathers one host
  candidate per non-loopback interface address; :func:`announce_host_addresses` replaces that
  list process-wide, which is also how ``127.0.0.1`` can be offered at all.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from urllib.parse import unquote

from aiortc import RTCConfiguration, RTCIceServer
from aiortc.rtcconfiguration import RTCBundlePolicy
from aiortc.rtcicetransport import parse_stun_turn_uri

from . import seams

__all__ = ["announce_host_addresses", "announced_host_addresses", "rtc_configuration"]

_announced: tuple[str, ...] = ()


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
