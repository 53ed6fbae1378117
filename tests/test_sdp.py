"""Checking an answer against its offer, on a real offer from a MediaRouter and a real answer.

The SDP pair is made once per module by a MediaRouter with two participants (so the offer has
the participant's own two m-lines and two forwarded ones) and aiortc client peers, over
loopback only; every test then works on the text alone.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.rtcconfiguration import RTCBundlePolicy

from vio.media import (
    CounterVideoTrack,
    MediaError,
    MediaRouter,
    ToneAudioTrack,
    TrackInfo,
    announce_host_addresses,
    check_answer,
)
from vio.media.sdp import parse


async def _offer_and_answer() -> tuple[str, str]:
    """The offer to the first of two participants once it carries the second's tracks."""
    router = MediaRouter()
    pairs: list[tuple[str, str]] = []
    peers: list[RTCPeerConnection] = []

    def client(pid: str) -> Callable[[str, list[TrackInfo]], object]:
        pc = RTCPeerConnection(
            RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
        )
        pc.addTrack(ToneAudioTrack(amplitude=0.3))
        pc.addTrack(CounterVideoTrack())
        peers.append(pc)

        async def on_offer(sdp: str, tracks: list[TrackInfo]) -> None:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            await pc.setLocalDescription(await pc.createAnswer())
            if pid == "ann":
                pairs.append((sdp, pc.localDescription.sdp))
            await router.accept_answer(pid, pc.localDescription.sdp)

        return on_offer

    try:
        for pid in ("ann", "bob"):
            await router.add_participant(pid, is_therapist=False, on_offer=client(pid))
        for _ in range(200):
            if any(sdp.count("\nm=") == 4 for sdp, _ in pairs):
                break
            await asyncio.sleep(0.05)
        return next(pair for pair in pairs if pair[0].count("\nm=") == 4)
    finally:
        await router.close()
        await asyncio.gather(*(pc.close() for pc in peers))


@pytest.fixture(scope="module")
def sdp_pair() -> tuple[str, str]:
    announce_host_addresses(["127.0.0.1"])
    try:
        return asyncio.run(_offer_and_answer())
    finally:
        announce_host_addresses([])


@pytest.fixture
def offer(sdp_pair: tuple[str, str]) -> str:
    return sdp_pair[0]


@pytest.fixture
def answer(sdp_pair: tuple[str, str]) -> str:
    return sdp_pair[1]


def sections(sdp: str) -> list[list[str]]:
    """The session part, then each media section, as lists of lines."""
    parts: list[list[str]] = [[]]
    for line in sdp.splitlines():
        if line.startswith("m="):
            parts.append([])
        parts[-1].append(line)
    return parts


def join(parts: list[list[str]]) -> str:
    return "".join(line + "\r\n" for part in parts for line in part)


def without(sdp: str, prefix: str) -> str:
    return join([[x for x in part if not x.startswith(prefix)] for part in sections(sdp)])


def refused(offer: str, answer: str) -> str:
    with pytest.raises(MediaError) as caught:
        check_answer(offer, answer)
    return str(caught.value)


def test_the_real_pair_is_what_the_tests_assume(offer: str, answer: str) -> None:
    kinds = [(s.kind, s.mid) for s in parse(offer).media]
    assert kinds == [(s.kind, s.mid) for s in parse(answer).media]
    assert [kind for kind, _ in kinds] == ["audio", "video", "audio", "video"]
    assert "a=fingerprint:" in answer and "a=ice-ufrag:" in answer


def test_the_genuine_answer_passes(offer: str, answer: str) -> None:
    check_answer(offer, answer)
    check_answer(offer, answer.replace("\r\n", "\n"))


def test_an_answer_without_fingerprint_is_refused(offer: str, answer: str) -> None:
    assert refused(offer, without(answer, "a=fingerprint:")) == (
        "the answer has no DTLS fingerprint (a=fingerprint)"
    )


def test_a_fingerprint_at_session_level_is_enough(offer: str, answer: str) -> None:
    parts = sections(answer)
    fingerprints = [x for x in parts[1] if x.startswith("a=fingerprint:")]
    moved = [parts[0] + fingerprints] + [
        [x for x in part if not x.startswith("a=fingerprint:")] for part in parts[1:]
    ]
    check_answer(offer, join(moved))


def test_one_section_without_fingerprint_is_refused(offer: str, answer: str) -> None:
    parts = sections(answer)
    parts[3] = [x for x in parts[3] if not x.startswith("a=fingerprint:")]
    assert refused(offer, join(parts)) == (
        "media section 3 of the answer has no DTLS fingerprint (a=fingerprint)"
    )


def test_malformed_or_unusable_fingerprints_are_refused(offer: str, answer: str) -> None:
    truncated = re.sub(r"(a=fingerprint:sha-256 [0-9A-F:]+):[0-9A-F]{2}\r\n", r"\1\r\n", answer)
    assert truncated != answer
    assert "malformed DTLS fingerprint" in refused(offer, truncated)
    assert "malformed DTLS fingerprint" in refused(
        offer, answer.replace("a=fingerprint:sha-256 ", "a=fingerprint:sha-256 zz ")
    )
    sha1 = join(
        [
            [x for x in part if not x.startswith("a=fingerprint:")]
            + (["a=fingerprint:sha-1 " + ":".join(["AB"] * 20)] if part[0].startswith("m=") else [])
            for part in sections(answer)
        ]
    )
    assert refused(offer, sha1) == (
        "the answer's DTLS fingerprints use none of sha-256, sha-384, sha-512"
    )


@pytest.mark.parametrize(
    ("prefix", "message"),
    [
        ("a=ice-ufrag:", "the answer has no ICE username fragment (a=ice-ufrag)"),
        ("a=ice-pwd:", "the answer has no ICE password (a=ice-pwd)"),
        ("a=setup:", "the answer has no DTLS role (a=setup)"),
        ("a=rtcp-mux", "media section 1 of the answer does not multiplex RTCP (a=rtcp-mux)"),
    ],
)
def test_an_answer_without_transport_attributes_is_refused(
    offer: str, answer: str, prefix: str, message: str
) -> None:
    assert refused(offer, without(answer, prefix)) == message


def test_one_section_without_ice_credentials_is_refused(offer: str, answer: str) -> None:
    parts = sections(answer)
    parts[4] = [x for x in parts[4] if not x.startswith("a=ice-pwd:")]
    assert refused(offer, join(parts)) == (
        "media section 4 of the answer has no ICE password (a=ice-pwd)"
    )


def test_bad_ice_credentials_and_dtls_role_are_refused(offer: str, answer: str) -> None:
    assert "ICE username fragment (a=ice-ufrag) must be 4 to 256" in refused(
        offer, re.sub(r"a=ice-ufrag:\S+", "a=ice-ufrag:a:b", answer)
    )
    assert "ICE password (a=ice-pwd) must be 22 to 256" in refused(
        offer, re.sub(r"a=ice-pwd:\S+", "a=ice-pwd:short", answer)
    )
    assert refused(offer, answer.replace("a=setup:active", "a=setup:actpass")) == (
        "the DTLS role of an answer must be a=setup:active or a=setup:passive, not 'actpass'"
    )


def test_an_answer_missing_an_m_line_is_refused(offer: str, answer: str) -> None:
    assert refused(offer, join(sections(answer)[:-1])) == (
        "the answer has 3 media sections, the offer has 4"
    )
    assert refused(offer, answer + join(sections(answer)[-1:])) == (
        "the answer has 5 media sections, the offer has 4"
    )


def test_an_answer_with_other_mids_or_kinds_is_refused(offer: str, answer: str) -> None:
    parts = sections(answer)
    mid = next(x for x in parts[2] if x.startswith("a=mid:"))
    changed = [part if i != 2 else [x if x != mid else "a=mid:elsewhere" for x in part]
               for i, part in enumerate(parts)]
    assert refused(offer, join(changed)) == (
        f"media section 2 of the answer has mid 'elsewhere', the offer's has mid '{mid[6:]}'"
    )
    swapped = [parts[0], parts[2], parts[1], *parts[3:]]
    assert refused(offer, join(swapped)) == (
        "media section 1 of the answer is video, the offer's is audio"
    )
    no_mid = [part if i != 1 else [x for x in part if not x.startswith("a=mid:")]
              for i, part in enumerate(parts)]
    assert refused(offer, join(no_mid)).startswith("media section 1 of the answer has no mid")


def test_an_answer_without_a_common_codec_is_refused(offer: str, answer: str) -> None:
    parts = sections(answer)
    parts[1] = ["m=audio 9 UDP/TLS/RTP/SAVPF 111"] + [
        x for x in parts[1][1:] if not x.startswith(("a=rtpmap:", "a=fmtp:"))
    ] + ["a=rtpmap:111 opus/48000/2"]
    assert refused(offer, join(parts)) == (
        "media section 1 of the answer (audio) shares no codec with the offer"
    )
    renamed = re.sub(r"a=rtpmap:(\d+) VP8/90000", r"a=rtpmap:\1 H264/90000", answer)
    assert "media section 2 of the answer (video) shares no codec" in refused(offer, renamed)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda a: "", "the answer is not valid SDP: it does not start with v=0"),
        (lambda a: "hello", "the answer is not valid SDP: it does not start with v=0"),
        (lambda a: a.replace("v=0", "v=1", 1), "it does not start with v=0"),
        (lambda a: "\x00" + a, "it does not start with v=0"),
        (lambda a: a.replace("s=-\r\n", "s=-\r\ngarbage\r\n"), "line 4 is not of the form x=value"),
        (lambda a: a.replace("t=0 0", "t=0 0\x07"), "line 4 is not of the form x=value"),
        (lambda a: a.replace("s=-\r\n", ""), "it has no s= line"),
        (lambda a: a.replace("m=audio ", "m=audio x", 1), "is a malformed m= line"),
        (lambda a: re.sub(r"m=audio \d+", "m=audio 99999", a, count=1), "is a malformed m= line"),
        (lambda a: re.sub(r"(m=audio \S+ \S+ )", r"\g<1>opus ", a, count=1),
         "an audio section lists a format that is not an RTP payload type"),
        (lambda a: a.replace(" typ host", " host", 1), "is a malformed candidate"),
        (lambda a: a.replace(" 127.0.0.1 ", " not-an-address ", 1), "is a malformed candidate"),
        (lambda a: a.replace("a=mid:", "a=:", 1), "is not an a=name[:value] line"),
    ],
)
def test_malformed_sdp_is_refused(
    offer: str, answer: str, make: Callable[[str], str], message: str
) -> None:
    assert message in refused(offer, make(answer))


def test_refusals_are_sentences_without_the_offer(offer: str, answer: str) -> None:
    message = refused(offer, without(answer, "a=fingerprint:"))
    assert message[0].islower() and not message.endswith(".")
    assert "127.0.0.1" not in message
