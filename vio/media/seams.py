"""Every place where vio.media reaches into aiortc or aioice beyond their public API.

The media server forwards encoded media without decoding it, announces its own ICE host
addresses and binds its media sockets inside a port range; none of this is possible through
aiortc's public API (DESIGN.md, "Media facts"). The
module functions, private attributes and private methods this takes are all reached through
the small functions below, each of which names the internal it touches; nothing else in
vio.media touches them.

At import, :func:`check_targets` confirms that each internal in :data:`TARGETS` still exists
and that the aiortc or aioice code that should read it still does, and raises a
``RuntimeError`` naming the missing one and the installed versions otherwise. An aiortc or
aioice upgrade that renames one of them therefore fails at start-up, not by silently
forwarding nothing.
"""

from __future__ import annotations

import asyncio
import errno
import importlib.metadata
import logging
import queue
import types
import weakref
from collections.abc import Callable, Coroutine, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import aioice.ice
from aiortc import (
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCRtpSender,
    rtcpeerconnection,
    rtcrtpreceiver,
    rtcrtpsender,
)
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtcrtpreceiver import RemoteStreamTrack
from aiortc.rtp import RtpPacket

__all__ = [
    "TARGETS",
    "HostAddresses",
    "HostPorts",
    "RtcpObserver",
    "RtpHandler",
    "Target",
    "aiortc_decoder_worker",
    "check_target",
    "check_targets",
    "guard_connect",
    "install_codec_hooks",
    "observe_sender_rtcp",
    "on_keyframe_request",
    "receiver_decoder",
    "replace_decoder_queue",
    "replace_track_queue",
    "send_pli",
    "set_host_addresses_provider",
    "set_host_ports",
    "set_receiver_track",
    "set_sender_stream_id",
    "wrap_rtp_handler",
]

logger = logging.getLogger(__name__)

RtpHandler = Callable[[RtpPacket, int], Coroutine[Any, Any, None]]
"""The shape of ``RTCRtpReceiver._handle_rtp_packet``: ``(packet, arrival_time_ms)``."""

RtcpObserver = Callable[[Any], None]
"""Called with each RTCP packet (``aiortc.rtcp.AnyRtcpPacket``) that reaches one sender."""

HostAddresses = Callable[[bool, bool], list[str]]
"""The shape of ``aioice.ice.get_host_addresses``: ``(use_ipv4, use_ipv6) -> addresses``."""

HostPorts = Callable[[], Iterable[int]]
"""The UDP ports to try, in order, for one ICE host socket (see :func:`set_host_ports`)."""


class _Put(Protocol):
    def put(self, item: Any) -> Any: ...


# --- the check --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One aiortc/aioice internal that vio.media relies on.

    ``owner`` is the module or class that has ``name``. With ``instance`` set, ``name`` is an
    attribute that ``owner.__init__`` assigns on each instance rather than one of ``owner``.
    ``used_by`` are the functions of aiortc/aioice that must still refer to ``name``; were one
    of them to stop, replacing ``name`` would silently do nothing.
    """

    owner: Any
    name: str
    instance: bool = False
    used_by: tuple[Callable[..., Any], ...] = ()

    def __str__(self) -> str:
        if isinstance(self.owner, types.ModuleType):
            return f"{self.owner.__name__}.{self.name}"
        return f"{self.owner.__module__}.{self.owner.__qualname__}.{self.name}"


def _versions() -> str:
    found = []
    for package in ("aiortc", "aioice"):
        try:
            found.append(f"{package} {importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{package} (version unknown)")
    return ", ".join(found)


def _code_names(function: Callable[..., Any]) -> set[str]:
    """The global and attribute names ``function``'s code (nested code included) refers to."""
    code = getattr(function, "__code__", None)
    if code is None:
        return set()

    def walk(c: types.CodeType) -> Iterator[str]:
        yield from c.co_names
        for const in c.co_consts:
            if isinstance(const, types.CodeType):
                yield from walk(const)

    return set(walk(code))


def check_target(target: Target) -> None:
    """Raise ``RuntimeError`` unless ``target`` exists and its ``used_by`` still use it."""
    if target.instance:
        present = target.name in _code_names(target.owner.__init__)
    else:
        present = hasattr(target.owner, target.name)
    if not present:
        raise RuntimeError(
            f"vio.media relies on {target}, which the installed {_versions()} does not have; "
            "vio/media/seams.py must be brought up to date for this version"
        )
    for function in target.used_by:
        if target.name not in _code_names(function):
            raise RuntimeError(
                f"vio.media replaces {target}, but {function.__module__}."
                f"{function.__qualname__} in the installed {_versions()} no longer uses it; "
                "vio/media/seams.py must be brought up to date for this version"
            )


def check_targets(targets: Iterable[Target]) -> None:
    """:func:`check_target` for each of ``targets``."""
    for target in targets:
        check_target(target)


_aiortc_decoder_worker = rtcrtpreceiver.decoder_worker
_aioice_get_host_addresses = aioice.ice.get_host_addresses
_aioice_get_component_candidates = aioice.ice.Connection.get_component_candidates
_DECODER_QUEUE = "_RTCRtpReceiver__decoder_queue"
_CONNECT = "_RTCPeerConnection__connect"

TARGETS: tuple[Target, ...] = (
    Target(aioice.ice, "get_host_addresses", used_by=(aioice.ice.Connection.gather_candidates,)),
    Target(
        aioice.ice.Connection,
        "get_component_candidates",
        used_by=(aioice.ice.Connection.gather_candidates,),
    ),
    Target(aioice.ice, "asyncio", used_by=(_aioice_get_component_candidates,)),
    Target(asyncio, "get_running_loop", used_by=(_aioice_get_component_candidates,)),
    Target(
        asyncio.AbstractEventLoop,
        "create_datagram_endpoint",
        used_by=(_aioice_get_component_candidates,),
    ),
    Target(rtcrtpreceiver, "decoder_worker", used_by=(RTCRtpReceiver.receive,)),
    Target(rtcrtpreceiver, "get_decoder", used_by=(_aiortc_decoder_worker,)),
    Target(rtcrtpreceiver, "RemoteBitrateEstimator", used_by=(RTCRtpReceiver.__init__,)),
    Target(rtcrtpsender, "get_encoder", used_by=(RTCRtpSender._next_encoded_frame,)),
    Target(RTCRtpReceiver, "_track", instance=True, used_by=(RTCRtpReceiver.receive,)),
    Target(
        RTCRtpReceiver,
        _DECODER_QUEUE,
        instance=True,
        used_by=(RTCRtpReceiver.receive, RTCRtpReceiver._handle_rtp_packet),
    ),
    Target(RemoteStreamTrack, "_queue", instance=True, used_by=(RTCRtpReceiver.receive,)),
    Target(RTCRtpReceiver, "_send_rtcp_pli"),
    Target(
        RTCRtpReceiver, "_handle_rtp_packet", used_by=(RTCDtlsTransport._handle_rtp_data,)
    ),
    Target(
        RTCRtpSender,
        "_stream_id",
        instance=True,
        used_by=(rtcpeerconnection.create_media_description_for_transceiver,),
    ),
    Target(RTCRtpSender, "_send_keyframe", used_by=(RTCRtpSender._handle_rtcp_packet,)),
    Target(
        RTCRtpSender, "_handle_rtcp_packet", used_by=(RTCDtlsTransport._handle_rtcp_data,)
    ),
    Target(
        RTCPeerConnection,
        _CONNECT,
        used_by=(RTCPeerConnection.setLocalDescription, RTCPeerConnection.setRemoteDescription),
    ),
    Target(RTCDtlsTransport, "_task", instance=True, used_by=(RTCDtlsTransport.start,)),
)
"""Every internal reached below."""

check_targets(TARGETS)


# --- aioice -----------------------------------------------------------------------------------


def set_host_addresses_provider(provider: HostAddresses | None) -> None:
    """Replace ``aioice.ice.get_host_addresses`` with ``provider`` (``None``: aioice's own)."""
    ice_module: Any = aioice.ice
    ice_module.get_host_addresses = provider or _aioice_get_host_addresses


class _LoopBindingPorts:
    """The running loop, except that a datagram endpoint on port 0 takes a port of ``ports()``."""

    def __init__(self, loop: asyncio.AbstractEventLoop, ports: HostPorts) -> None:
        self._loop = loop
        self._ports = ports

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loop, name)

    async def create_datagram_endpoint(
        self, protocol_factory: Callable[[], Any], local_addr: Any = None, **kwargs: Any
    ) -> tuple[Any, Any]:
        if local_addr is None or local_addr[1] != 0:
            return await self._loop.create_datagram_endpoint(
                protocol_factory, local_addr=local_addr, **kwargs
            )
        for port in self._ports():
            try:
                return await self._loop.create_datagram_endpoint(
                    protocol_factory, local_addr=(local_addr[0], port), **kwargs
                )
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
        raise OSError(errno.EADDRINUSE, "every port of the media port range is in use")


class _AsyncioBindingPorts:
    """The ``asyncio`` module as seen by one function: its running loop binds inside ``ports``."""

    def __init__(self, ports: HostPorts) -> None:
        self._ports = ports

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)

    def get_running_loop(self) -> _LoopBindingPorts:
        return _LoopBindingPorts(asyncio.get_running_loop(), self._ports)


def set_host_ports(ports: HostPorts | None) -> None:
    """Bind every ICE host socket to the first free port of ``ports()`` (``None``: any port).

    ``aioice.ice.Connection.get_component_candidates`` binds one UDP socket per host address
    with ``asyncio.get_running_loop().create_datagram_endpoint(..., local_addr=(address, 0))``
    and has no option for the port. It is replaced by the same function (aioice's own code
    object) evaluated with a module ``asyncio`` of its own, whose running loop binds such a
    socket to the first port of ``ports()`` that is free instead of port 0. When none is, the
    bind fails with ``EADDRINUSE``, which aioice handles as for any address it cannot bind: it
    logs it and gathers no candidate on that address. Nothing else in aioice sees the change;
    sockets to a TURN server (the server's own relay candidates) keep ephemeral ports.
    Process-wide, like :func:`set_host_addresses_provider`.
    """
    connection: Any = aioice.ice.Connection
    if ports is None:
        connection.get_component_candidates = _aioice_get_component_candidates
        return
    original = _aioice_get_component_candidates
    replacement = types.FunctionType(
        original.__code__,
        {**original.__globals__, "asyncio": _AsyncioBindingPorts(ports)},
        original.__name__,
        original.__defaults__,
        original.__closure__,
    )
    replacement.__kwdefaults__ = original.__kwdefaults__
    replacement.__qualname__ = original.__qualname__
    replacement.__doc__ = original.__doc__
    connection.get_component_candidates = replacement


# --- codecs -----------------------------------------------------------------------------------


def install_codec_hooks(
    *,
    decoder_worker: Callable[..., None],
    get_decoder: Callable[[Any], Any],
    get_encoder: Callable[[Any], Any],
    bitrate_estimator: Callable[[], Any],
) -> None:
    """Replace ``aiortc.rtcrtp{receiver,sender}``'s codec factories, decoder thread, estimator.

    Process-wide: ``decoder_worker``, ``get_decoder`` and ``RemoteBitrateEstimator`` of
    ``aiortc.rtcrtpreceiver``, and ``get_encoder`` of ``aiortc.rtcrtpsender``.
    """
    receiver_module: Any = rtcrtpreceiver
    sender_module: Any = rtcrtpsender
    receiver_module.decoder_worker = decoder_worker
    receiver_module.get_decoder = get_decoder
    receiver_module.RemoteBitrateEstimator = bitrate_estimator
    sender_module.get_encoder = get_encoder


def aiortc_decoder_worker(
    loop: asyncio.AbstractEventLoop, input_q: Any, output_q: Any, decode_error: Any
) -> None:
    """Run aiortc's own ``aiortc.rtcrtpreceiver.decoder_worker`` (a receiver's decoder thread)."""
    _aiortc_decoder_worker(loop, input_q, output_q, decode_error)


def receiver_decoder(codec: Any) -> Any:
    """A decoder from ``aiortc.rtcrtpreceiver.get_decoder``, as a decoder thread would get it."""
    receiver_module: Any = rtcrtpreceiver
    return receiver_module.get_decoder(codec)


# --- receivers --------------------------------------------------------------------------------


def set_receiver_track(receiver: RTCRtpReceiver, track: RemoteStreamTrack) -> None:
    """Set ``RTCRtpReceiver._track``; set before negotiation, aiortc keeps it."""
    receiver._track = track


def replace_decoder_queue(receiver: RTCRtpReceiver, replacement: _Put) -> None:
    """Replace ``RTCRtpReceiver.__decoder_queue``, where each reassembled frame is put."""
    if not isinstance(getattr(receiver, _DECODER_QUEUE, None), queue.Queue):
        raise RuntimeError(f"this receiver has no {_DECODER_QUEUE} to replace ({_versions()})")
    setattr(receiver, _DECODER_QUEUE, replacement)


def replace_track_queue(track: RemoteStreamTrack, replacement: _Put) -> None:
    """Replace ``RemoteStreamTrack._queue``, into which the decoder thread puts frames."""
    patched: Any = track
    patched._queue = replacement


def send_pli(receiver: RTCRtpReceiver, ssrc: int) -> Coroutine[Any, Any, None]:
    """``RTCRtpReceiver._send_rtcp_pli``: ask the sender of ``ssrc`` for a keyframe."""
    pli: Coroutine[Any, Any, None] = receiver._send_rtcp_pli(ssrc)
    return pli


def wrap_rtp_handler(receiver: RTCRtpReceiver, wrap: Callable[[RtpHandler], RtpHandler]) -> None:
    """Replace ``RTCRtpReceiver._handle_rtp_packet`` of ``receiver`` by ``wrap(original)``."""
    patched: Any = receiver
    patched._handle_rtp_packet = wrap(receiver._handle_rtp_packet)


# --- senders ----------------------------------------------------------------------------------


def set_sender_stream_id(sender: RTCRtpSender, stream_id: str) -> None:
    """Set ``RTCRtpSender._stream_id``, the MediaStream id of the sender's ``a=msid``."""
    sender._stream_id = stream_id


def on_keyframe_request(sender: RTCRtpSender, callback: Callable[[], None]) -> None:
    """Call ``callback`` instead of ``RTCRtpSender._send_keyframe`` on PLI/FIR for ``sender``."""
    patched: Any = sender
    patched._send_keyframe = callback


_RTCP_OBSERVERS: weakref.WeakKeyDictionary[RTCRtpSender, list[RtcpObserver]] = (
    weakref.WeakKeyDictionary()
)


def observe_sender_rtcp(sender: RTCRtpSender, observer: RtcpObserver) -> None:
    """Call ``observer(packet)`` for each RTCP packet routed to ``sender``, then handle it.

    ``RTCDtlsTransport._handle_rtcp_data`` routes each received RTCP packet (receiver reports,
    REMB, NACK, PLI/FIR) to ``RTCRtpSender._handle_rtcp_packet`` of the senders it concerns.
    The first observer of a sender wraps the handler it has at that moment (aiortc's own or an
    earlier replacement) and every later observer joins the same list, so several hooks compose;
    the handler that was there is always called after the observers. An observer is synchronous;
    one that raises is logged (its type only) and the packet still reaches the others and the
    handler.
    """
    observers = _RTCP_OBSERVERS.get(sender)
    if observers is not None:
        observers.append(observer)
        return
    observers = _RTCP_OBSERVERS[sender] = [observer]
    handle: Callable[[Any], Coroutine[Any, Any, None]] = sender._handle_rtcp_packet

    async def observed(packet: Any) -> None:
        for notify in observers:
            try:
                notify(packet)
            except Exception as error:
                logger.warning("an RTCP observer failed: %s", type(error).__name__)
        await handle(packet)

    patched: Any = sender
    patched._handle_rtcp_packet = observed


# --- peer connections -------------------------------------------------------------------------


def guard_connect(pc: RTCPeerConnection, on_error: Callable[[BaseException], None]) -> None:
    """Pass failures of ``RTCPeerConnection.__connect``, ``RTCDtlsTransport._task`` to ``on_error``.

    aiortc starts ``__connect`` (ICE, then DTLS, then the senders and receivers) as a task that
    nobody awaits on every ``setLocalDescription`` and ``setRemoteDescription``, and each DTLS
    transport's packet loop is a task that is only ever cancelled. A failure of either would be
    an unretrieved task exception; with this, ``on_error`` gets it instead.
    """
    connect: Callable[[], Coroutine[Any, Any, None]] = getattr(pc, _CONNECT)
    watched: weakref.WeakSet[asyncio.Future[None]] = weakref.WeakSet()

    def retrieve(task: asyncio.Future[None]) -> None:
        if not task.cancelled() and (error := task.exception()) is not None:
            on_error(error)

    async def guarded() -> None:
        try:
            await connect()
        except Exception as error:
            on_error(error)
        for transceiver in pc.getTransceivers():
            task: asyncio.Future[None] | None = transceiver.receiver.transport._task
            if task is not None and task not in watched:
                watched.add(task)
                task.add_done_callback(retrieve)

    setattr(pc, _CONNECT, guarded)
