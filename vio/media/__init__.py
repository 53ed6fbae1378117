"""Media layer: the server end of every participant's WebRTC connection, forwarding media.

See DESIGN.md, "Media facts". :class:`MediaRouter` is the room-facing API;
:mod:`vio.media.ice` sets which addresses, ports and STUN/TURN servers ICE uses;
:mod:`vio.media.rtp_forwarding` forwards each RTP packet to each leg with a rewritten header,
never decoding it (:mod:`vio.media.passthrough`: what it shares with a frame passthrough);
:mod:`vio.media.sdp` checks a participant's answer against the offer before it is applied;
:mod:`vio.media.seams` is the one place that reaches into aiortc and aioice internals, and
checks at import that they are still there;
:mod:`vio.media.synthetic` provides test media for the headless bot and tests.
"""

from __future__ import annotations

from .errors import MediaError
from .ice import (
    PortRange,
    announce_host_addresses,
    announced_host_addresses,
    offer_with_public_address,
    port_range,
    rtc_configuration,
    use_port_range,
)
from .passthrough import install_passthrough_hooks
from .router import MediaConfig, MediaRouter, MediaState, TrackInfo
from .rtp_forwarding import RtpLeg, RtpSource
from .sdp import check_answer
from .synthetic import CounterVideoTrack, ToneAudioTrack, read_counter

__all__ = [
    "CounterVideoTrack",
    "MediaConfig",
    "MediaError",
    "MediaRouter",
    "MediaState",
    "PortRange",
    "RtpLeg",
    "RtpSource",
    "ToneAudioTrack",
    "TrackInfo",
    "announce_host_addresses",
    "announced_host_addresses",
    "check_answer",
    "install_passthrough_hooks",
    "offer_with_public_address",
    "port_range",
    "read_counter",
    "rtc_configuration",
    "use_port_range",
]
