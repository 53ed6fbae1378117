"""Media layer: the server end of every participant's WebRTC connection, forwarding media.

See DESIGN.md, "Media facts". :class:`MediaRouter` is the room-facing API;
:mod:`vio.media.ice` sets which addresses and STUN/TURN servers ICE uses;
:mod:`vio.media.passthrough` forwards encoded media without decoding it;
:mod:`vio.media.synthetic` provides test media for the headless bot and tests.
"""

from __future__ import annotations

from .ice import announce_host_addresses, announced_host_addresses, rtc_configuration
from .passthrough import ForwardedTrack, install_passthrough_hooks
from .router import MediaConfig, MediaError, MediaRouter, MediaState, TrackInfo
from .synthetic import CounterVideoTrack, ToneAudioTrack, read_counter

__all__ = [
    "CounterVideoTrack",
    "ForwardedTrack",
    "MediaConfig",
    "MediaError",
    "MediaRouter",
    "MediaState",
    "ToneAudioTrack",
    "TrackInfo",
    "announce_host_addresses",
    "announced_host_addresses",
    "install_passthrough_hooks",
    "read_counter",
    "rtc_configuration",
]
