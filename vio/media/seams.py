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
import random
import time
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
    rtcdtlstransport,
    rtcpeerconnection,
    rtcrtpreceiver,
    rtcrtpsender,
)
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtcicetransport import RTCIceTransport
from aiortc.rtcrtpparameters import RTCRtpSendParameters
from aiortc.rtcrtpreceiver import RemoteStreamTrack
from aiortc.rtp import (
    AnyRtcpPacket,
    RtcpByePacket,
    RtcpSdesPacket,
    RtcpSenderInfo,
    RtcpSourceInfo,
    RtcpSrPacket,
    RtpPacket,
)

__all__ = [
    "TARGETS",
    "HostAddresses",
    "HostPorts",
    "RtcpObserver",
    "RtpOutput",
    "Target",
    "aiortc_decoder_worker",
    "check_target",
    "check_targets",
    "guard_connect",
    "install_codec_hooks",
    "observe_sender_rtcp",
    "on_keyframe_request",
    "on_sender_start",
    "receiver_decoder",
    "replace_decoder_queue",
    "replace_jitter_buffer",
    "replace_sender_reports",
    "replace_track_queue",
    "send_pli",
    "set_host_addresses_provider",
    "set_host_ports",
    "set_receiver_track",
    "set_sender_stream_id",
]

logger = logging.getLogger(__name__)


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
_JITTER_BUFFER = "_RTCRtpReceiver__jitter_buffer"
_SENDER = "_RTCRtpSender__"
_SENDER_REPORT_STATE = ("cname", "lsr", "lsr_time", "rtcp_started", "rtcp_exited")

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
    # RTP-level forwarding (vio.media.rtp_forwarding)
    Target(
        RTCRtpReceiver,
        _JITTER_BUFFER,
        instance=True,
        used_by=(RTCRtpReceiver._handle_rtp_packet,),
    ),
    Target(RTCRtpSender, "send", used_by=(getattr(RTCPeerConnection, _CONNECT),)),
    Target(RTCRtpSender, "_run_rtcp", used_by=(RTCRtpSender.send,)),
    Target(RTCRtpSender, "_send_rtcp", used_by=(RTCRtpSender._run_rtcp,)),
    *(
        Target(RTCRtpSender, _SENDER + name, instance=True, used_by=(RTCRtpSender.stop,))
        for name in ("rtcp_started", "rtcp_exited")
    ),
    *(
        Target(
            RTCRtpSender, _SENDER + name, instance=True, used_by=(RTCRtpSender._run_rtcp,)
        )
        for name in ("cname", "lsr", "lsr_time")
    ),
    Target(RTCDtlsTransport, "_tx_srtp", instance=True, used_by=(RTCDtlsTransport._send_rtp,)),
    Target(RTCDtlsTransport, "_state", instance=True, used_by=(RTCDtlsTransport._send_rtp,)),
    Target(rtcdtlstransport, "State", used_by=(RTCDtlsTransport._send_rtp,)),
    Target(rtcdtlstransport.State, "CONNECTED"),
    Target(RTCIceTransport, "_connection", instance=True),
    Target(
        aioice.ice.Connection,
        "_nominated",
        instance=True,
        used_by=(aioice.ice.Connection.sendto,),
    ),
    Target(aioice.ice.StunProtocol, "send_data", used_by=(aioice.ice.Connection.sendto,)),
)
"""Every internal reached below."""

check_targets(TARGETS)
if not {"transport", "sendto"} <= _code_names(aioice.ice.StunProtocol.send_data):
    raise RuntimeError(
        "vio.media sends RTP as aioice.ice.StunProtocol.send_data does (transport.sendto), "
        f"which the installed {_versions()} no longer does; "
        "vio/media/seams.py must be brought up to date for this version"
    )


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
    bitrate_estimator: Callable[[], Any],
    get_decoder: Callable[[Any], Any] | None = None,
    get_encoder: Callable[[Any], Any] | None = None,
) -> None:
    """Replace ``aiortc.rtcrtp{receiver,sender}``'s decoder thread, estimator, codec factories.

    Process-wide: ``decoder_worker``, ``RemoteBitrateEstimator`` and (if given)
    ``get_decoder`` of ``aiortc.rtcrtpreceiver``, and (if given) ``get_encoder`` of
    ``aiortc.rtcrtpsender``.
    """
    receiver_module: Any = rtcrtpreceiver
    sender_module: Any = rtcrtpsender
    receiver_module.decoder_worker = decoder_worker
    receiver_module.RemoteBitrateEstimator = bitrate_estimator
    if get_decoder is not None:
        receiver_module.get_decoder = get_decoder
    if get_encoder is not None:
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


# --- senders ----------------------------------------------------------------------------------


def set_sender_stream_id(sender: RTCRtpSender, stream_id: str) -> None:
    """Set ``RTCRtpSender._stream_id``, the MediaStream id of the sender's ``a=msid``."""
    sender._stream_id = stream_id


def on_keyframe_request(sender: RTCRtpSender, callback: Callable[[], None]) -> None:
    """Call ``callback`` instead of ``RTCRtpSender._send_keyframe`` on PLI/FIR for ``sender``."""
    patched: Any = sender
    patched._send_keyframe = callback


_OBSERVERS = "_vio_rtcp_observers"
"""Where the handler that :func:`observe_sender_rtcp` installs keeps its observers."""


def observe_sender_rtcp(sender: RTCRtpSender, observer: RtcpObserver) -> None:
    """Call ``observer(packet)`` for each RTCP packet routed to ``sender``, then handle it.

    ``RTCDtlsTransport._handle_rtcp_data`` routes each received RTCP packet (receiver reports,
    REMB, NACK, PLI/FIR) to ``RTCRtpSender._handle_rtcp_packet`` of the senders it concerns.
    The first observer of a sender wraps the handler it has at that moment (aiortc's own or an
    earlier replacement) and every later observer joins the same list, so several hooks compose;
    the handler that was there is always called after the observers. An observer is synchronous;
    one that raises is logged (its type only) and the packet still reaches the others and the
    handler. The list lives on the installed handler, so it goes with the sender (observers
    usually hold their sender's connection: a table keyed by sender would keep it alive).
    """
    handle: Callable[[Any], Coroutine[Any, Any, None]] = sender._handle_rtcp_packet
    observers: list[RtcpObserver] | None = getattr(handle, _OBSERVERS, None)
    if observers is not None:
        observers.append(observer)
        return
    observers = [observer]

    async def observed(packet: Any) -> None:
        for notify in observers:
            try:
                notify(packet)
            except Exception as error:
                logger.warning("an RTCP observer failed: %s", type(error).__name__)
        await handle(packet)

    setattr(observed, _OBSERVERS, observers)
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


# --- RTP-level forwarding ---------------------------------------------------------------------


class _JitterBuffer(Protocol):
    def add(self, packet: RtpPacket) -> tuple[bool, Any]: ...


def replace_jitter_buffer(receiver: RTCRtpReceiver, replacement: _JitterBuffer) -> None:
    """Replace ``RTCRtpReceiver.__jitter_buffer``, to which each received packet is added.

    ``_handle_rtp_packet`` adds every packet there once aiortc has fed its statistics,
    unwrapped RTX and generated NACKs; ``add`` returns ``(picture_lost, frame)``, and a
    frame of ``None`` means nothing goes to the decoder.
    """
    if not hasattr(receiver, _JITTER_BUFFER):
        raise RuntimeError(f"this receiver has no {_JITTER_BUFFER} to replace ({_versions()})")
    setattr(receiver, _JITTER_BUFFER, replacement)


def on_sender_start(
    sender: RTCRtpSender, callback: Callable[[RTCRtpSendParameters], None]
) -> None:
    """Call ``callback(parameters)`` when aiortc first starts ``sender`` (``send()``).

    aiortc calls ``send`` once the DTLS transport is connected, with the negotiated codecs,
    header extensions and mid; it may call it again on renegotiation, which changes nothing.
    """
    send = sender.send
    started = False

    async def starting(parameters: RTCRtpSendParameters) -> None:
        nonlocal started
        if not started:
            started = True
            callback(parameters)
        await send(parameters)

    patched: Any = sender
    patched.send = starting


SenderInfo = Callable[[], "RtcpSenderInfo | None"]
"""What one sender report says now, or ``None`` while there is nothing to report."""


def replace_sender_reports(
    sender: RTCRtpSender, sender_info: SenderInfo, reporting: asyncio.Event
) -> None:
    """Make ``sender``'s RTCP task report ``sender_info()`` instead of its own counters.

    ``RTCRtpSender._run_rtcp`` sends an SR (+ SDES CNAME) every 0.5-1.5 s built from counters
    that only its own RTP task updates; a sender whose packets are sent by someone else would
    report nothing sent, at NTP time 0. This runs the same loop (the same interval, the same
    bookkeeping for round-trip times, RTCP BYE when stopped) with ``sender_info()`` instead,
    sending no SR while it returns ``None``, and waiting without a timer while ``reporting``
    is clear: a sender with nothing to report costs nothing. Set before the sender starts.
    """
    state = {name: _SENDER + name for name in _SENDER_REPORT_STATE}
    started: asyncio.Event = getattr(sender, state["rtcp_started"])
    exited: asyncio.Event = getattr(sender, state["rtcp_exited"])

    async def run_rtcp() -> None:
        started.set()
        try:
            while True:
                await reporting.wait()
                await asyncio.sleep(0.5 + random.random())
                info = sender_info()
                if info is None:
                    continue
                packets: list[AnyRtcpPacket] = [RtcpSrPacket(ssrc=sender._ssrc, sender_info=info)]
                setattr(sender, state["lsr"], (info.ntp_timestamp >> 16) & 0xFFFFFFFF)
                setattr(sender, state["lsr_time"], time.time())
                cname: str | None = getattr(sender, state["cname"])
                if cname is not None:
                    packets.append(
                        RtcpSdesPacket(
                            chunks=[RtcpSourceInfo(ssrc=sender._ssrc, items=[(1, cname.encode())])]
                        )
                    )
                await sender._send_rtcp(packets)
        except asyncio.CancelledError:
            pass
        await sender._send_rtcp([RtcpByePacket(sources=[sender._ssrc])])
        exited.set()

    patched: Any = sender
    patched._run_rtcp = run_rtcp


class RtpOutput:
    """Sends plaintext RTP through one DTLS transport's SRTP session, without awaiting.

    ``RTCDtlsTransport._send_rtp`` is a coroutine only because aioice's ``send`` is; what it
    awaits ends in ``StunProtocol.send_data``, which is ``transport.sendto(data, addr)`` on
    the nominated pair's socket (a TURN relay's transport queues the send itself). This does
    the same synchronously: ``protect`` with the transport's outbound SRTP session, then
    ``sendto``. ``send`` returns whether the packet went out: not while the transport is not
    connected or ICE has no nominated pair. The transport's own sent-bytes statistics do not
    count these packets.
    """

    __slots__ = ("_dtls", "_ice", "_path")

    def __init__(self, dtls: RTCDtlsTransport) -> None:
        self._dtls = dtls
        self._ice: Any = dtls.transport._connection
        self._path: tuple[Callable[[bytes, Any], None], Any] | None = None

    def send(self, data: bytes) -> bool:
        dtls = self._dtls
        if dtls._state is not _DTLS_CONNECTED:
            self._path = None
            return False
        path = self._path
        if path is None:
            pair = self._ice._nominated.get(1)
            if pair is None:
                return False
            path = self._path = (pair.protocol.transport.sendto, pair.remote_addr)
        path[0](dtls._tx_srtp.protect(data), path[1])
        return True


_DTLS_CONNECTED = rtcdtlstransport.State.CONNECTED
