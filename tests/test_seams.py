"""The aiortc/aioice internals vio.media relies on, and the check that they are still there."""

from __future__ import annotations

import asyncio
import gc
import importlib.metadata
import logging
import re
from collections.abc import Iterator

import aioice.ice
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.rtcconfiguration import RTCBundlePolicy
from aiortc.rtcrtpreceiver import RemoteStreamTrack

from vio.media import ToneAudioTrack, announce_host_addresses, seams


@pytest.fixture
def loopback_only() -> Iterator[None]:
    announce_host_addresses(["127.0.0.1"])
    yield
    announce_host_addresses([])


def test_every_target_exists_in_the_installed_aiortc() -> None:
    seams.check_targets(seams.TARGETS)
    assert {str(t) for t in seams.TARGETS} >= {
        "aioice.ice.get_host_addresses",
        "aiortc.rtcrtpreceiver.decoder_worker",
        "aiortc.rtcrtpreceiver.get_decoder",
        "aiortc.rtcrtpreceiver.RemoteBitrateEstimator",
        "aiortc.rtcrtpsender.get_encoder",
        "aiortc.rtcrtpreceiver.RTCRtpReceiver._track",
        "aiortc.rtcrtpreceiver.RTCRtpReceiver._RTCRtpReceiver__decoder_queue",
        "aiortc.rtcrtpreceiver.RemoteStreamTrack._queue",
        "aiortc.rtcrtpreceiver.RTCRtpReceiver._send_rtcp_pli",
        "aiortc.rtcrtpreceiver.RTCRtpReceiver._handle_rtp_packet",
        "aiortc.rtcrtpsender.RTCRtpSender._stream_id",
        "aiortc.rtcrtpsender.RTCRtpSender._send_keyframe",
        "aiortc.rtcpeerconnection.RTCPeerConnection._RTCPeerConnection__connect",
        "aiortc.rtcdtlstransport.RTCDtlsTransport._task",
    }


def _versions() -> str:
    return re.escape(
        f"aiortc {importlib.metadata.version('aiortc')}, "
        f"aioice {importlib.metadata.version('aioice')}"
    )


@pytest.mark.parametrize(
    ("target", "named"),
    [
        (seams.Target(aioice.ice, "get_host_adresses"), "aioice.ice.get_host_adresses"),
        (
            seams.Target(RTCRtpSender, "_send_key_frame"),
            "aiortc.rtcrtpsender.RTCRtpSender._send_key_frame",
        ),
        (
            seams.Target(RTCRtpSender, "_stream_identifier", instance=True),
            "aiortc.rtcrtpsender.RTCRtpSender._stream_identifier",
        ),
        (
            # A class attribute is not one that __init__ sets on each instance.
            seams.Target(RemoteStreamTrack, "recv", instance=True),
            "aiortc.rtcrtpreceiver.RemoteStreamTrack.recv",
        ),
    ],
)
def test_a_missing_target_is_named_with_the_installed_versions(
    target: seams.Target, named: str
) -> None:
    with pytest.raises(RuntimeError, match=rf"relies on {re.escape(named)}, .*{_versions()}"):
        seams.check_target(target)


def test_a_target_that_aiortc_no_longer_uses_is_named() -> None:
    target = seams.Target(RTCRtpSender, "_stream_id", instance=True, used_by=(RTCRtpSender.stop,))
    with pytest.raises(
        RuntimeError,
        match=r"replaces aiortc\.rtcrtpsender\.RTCRtpSender\._stream_id, but "
        rf"aiortc\.rtcrtpsender\.RTCRtpSender\.stop .*{_versions()} no longer uses it",
    ):
        seams.check_target(target)


def _peer() -> RTCPeerConnection:
    return RTCPeerConnection(
        RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
    )


@pytest.mark.asyncio
async def test_guard_connect_retrieves_a_failing_connect(
    loopback_only: None, caplog: pytest.LogCaptureFixture
) -> None:
    """aiortc's connect task fails on an answer without fingerprint; the guard gets it."""
    offerer, answerer = _peer(), _peer()
    errors: list[BaseException] = []
    seams.guard_connect(offerer, errors.append)
    try:
        offerer.addTransceiver("audio", direction="recvonly")
        answerer.addTrack(ToneAudioTrack(amplitude=0.3))
        await offerer.setLocalDescription(await offerer.createOffer())
        await answerer.setRemoteDescription(offerer.localDescription)
        await answerer.setLocalDescription(await answerer.createAnswer())
        stripped = "".join(
            line
            for line in answerer.localDescription.sdp.splitlines(keepends=True)
            if not line.startswith("a=fingerprint:")
        )
        await offerer.setRemoteDescription(RTCSessionDescription(sdp=stripped, type="answer"))
        for _ in range(100):
            if errors:
                break
            await asyncio.sleep(0.05)
        assert [type(e) for e in errors] == [AssertionError]
    finally:
        await offerer.close()
        await answerer.close()
    gc.collect()
    await asyncio.sleep(0)
    assert not [
        r for r in caplog.records if r.levelno >= logging.ERROR and r.name == "asyncio"
    ]
