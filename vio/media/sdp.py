"""Checks on a participant's SDP answer before aiortc applies it; plain functions, no I/O.

aiortc checks an answer only in part before it changes anything, and some of what it leaves
unchecked fails later in a background task (an answer without ``a=fingerprint`` fails DTLS
with an assertion there). :func:`check_answer` refuses, with a :class:`MediaError` whose
message says why, every answer that does not fit the offer it answers:

* text that is not SDP: no ``v=0`` first, a line not of the form ``x=value``, a malformed
  ``m=`` or ``a=candidate`` line, no ``o=``/``s=``/``t=`` line;
* a different number of media sections than the offer, or sections whose kinds or mids
  differ from the offer's, in order;
* a media section without a DTLS fingerprint that aiortc can check (``a=fingerprint`` with
  sha-256, sha-384 or sha-512, at session or media level), without ICE credentials
  (``a=ice-ufrag``, ``a=ice-pwd``), without a DTLS role of ``active`` or ``passive``
  (``a=setup``), or, for audio and video, without ``a=rtcp-mux`` or without a codec of the
  offer's (same payload type, same encoding name; retransmission and FEC formats do not
  count).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from .errors import MediaError

__all__ = [
    "FINGERPRINT_ALGORITHMS",
    "MediaSection",
    "SessionDescription",
    "check_answer",
    "parse",
]

FINGERPRINT_ALGORITHMS = ("sha-256", "sha-384", "sha-512")
"""Fingerprint hash functions aiortc verifies; an answer needs a fingerprint with one of them."""

_DIGEST_BYTES = {"md5": 16, "sha-1": 20, "sha-224": 28, "sha-256": 32, "sha-384": 48,
                 "sha-512": 64}
_RTP_KINDS = ("audio", "video")
_RTCP_PAYLOAD_TYPES = range(72, 77)
_REPAIR_FORMATS = ("rtx", "red", "ulpfec", "flexfec-03")
_LINE = re.compile(r"[a-z]=")
_M_LINE = re.compile(r"m=([a-z]+) ([0-9]{1,5})(?:/[0-9]+)? ([A-Za-z0-9/_.-]+)((?: [^ ]+)+)")
_ATTRIBUTE_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_FINGERPRINT = re.compile(r"([A-Za-z0-9-]+) ((?:[0-9A-Fa-f]{2}:)*[0-9A-Fa-f]{2})")
_ICE_CHARS = re.compile(r"[A-Za-z0-9+/]+")


@dataclass(frozen=True)
class MediaSection:
    """One ``m=`` section: its kind, port, transport protocol, formats and attributes.

    ``attributes`` are the ``a=`` lines in order, as ``(name, value)``; ``value`` is ``None``
    for a flag such as ``a=rtcp-mux``.
    """

    kind: str
    port: int
    protocol: str
    formats: tuple[str, ...]
    attributes: tuple[tuple[str, str | None], ...]

    def values(self, name: str) -> list[str | None]:
        return [value for key, value in self.attributes if key == name]

    @property
    def mid(self) -> str | None:
        mids = self.values("mid")
        return mids[0] if mids else None

    def rtpmap(self, payload_type: str) -> str | None:
        """The encoding name (lower case) that ``a=rtpmap`` gives ``payload_type``."""
        for value in self.values("rtpmap"):
            number, _, encoding = (value or "").partition(" ")
            if number == payload_type:
                return encoding.partition("/")[0].lower()
        return None


@dataclass(frozen=True)
class SessionDescription:
    """An SDP session description: its session-level ``a=`` lines and its media sections."""

    attributes: tuple[tuple[str, str | None], ...]
    media: tuple[MediaSection, ...]

    def values(self, name: str) -> list[str | None]:
        return [value for key, value in self.attributes if key == name]


def _attribute(value: str, what: str, number: int) -> tuple[str, str | None]:
    name, colon, rest = value.partition(":")
    if not _ATTRIBUTE_NAME.fullmatch(name):
        raise MediaError(f"{what} is not valid SDP: line {number} is not an a=name[:value] line")
    return name, rest if colon else None


def parse(sdp: str, *, what: str = "the description") -> SessionDescription:
    """Split ``sdp`` into session attributes and media sections; ``what`` names it in errors.

    Raises :class:`MediaError` for text that is not SDP.
    """
    lines = [(n, line.removesuffix("\r")) for n, line in enumerate(sdp.split("\n"), 1)]
    lines = [(n, line) for n, line in lines if line]
    if not lines or lines[0][1] != "v=0":
        raise MediaError(f"{what} is not valid SDP: it does not start with v=0")
    session: list[tuple[str, str | None]] = []
    session_types: set[str] = set()
    media: list[MediaSection] = []
    current: list[tuple[str, str | None]] = []
    header: tuple[str, int, str, tuple[str, ...]] | None = None

    def close_section() -> None:
        if header is not None:
            media.append(MediaSection(*header, attributes=tuple(current)))

    for number, line in lines:
        if not _LINE.match(line) or not line.isprintable():
            raise MediaError(f"{what} is not valid SDP: line {number} is not of the form x=value")
        if line.startswith("m="):
            m = _M_LINE.fullmatch(line)
            if m is None or int(m.group(2)) > 65535:
                raise MediaError(f"{what} is not valid SDP: line {number} is a malformed m= line")
            close_section()
            header = (m.group(1), int(m.group(2)), m.group(3), tuple(m.group(4).split()))
            current = []
        elif line.startswith("a="):
            attribute = _attribute(line[2:], what, number)
            if attribute[0] == "candidate" and not _is_candidate(attribute[1] or ""):
                raise MediaError(f"{what} is not valid SDP: line {number} is a malformed candidate")
            (session if header is None else current).append(attribute)
        elif header is None:
            session_types.add(line[0])
    close_section()
    for line_type in "ost":
        if line_type not in session_types:
            raise MediaError(f"{what} is not valid SDP: it has no {line_type}= line")
    for section in media:
        if section.kind in _RTP_KINDS and not all(
            f.isdigit() and int(f) < 128 and int(f) not in _RTCP_PAYLOAD_TYPES
            for f in section.formats
        ):
            raise MediaError(f"{what} is not valid SDP: an {section.kind} section lists a "
                             "format that is not an RTP payload type")
    return SessionDescription(tuple(session), tuple(media))


def _is_candidate(value: str) -> bool:
    """Whether ``value`` reads ``foundation component transport priority address port typ
    type [name value]...`` with numbers where numbers belong and an IP or mDNS address."""
    bits = value.split()
    if len(bits) < 8 or len(bits) % 2 or bits[6] != "typ":
        return False
    if not (bits[1].isdigit() and bits[3].isdigit() and bits[5].isdigit()):
        return False
    if int(bits[5]) > 65535 or not _is_address(bits[4]):
        return False
    extras = dict(zip(bits[8::2], bits[9::2], strict=True))
    return "rport" not in extras or extras["rport"].isdigit()


def _is_address(host: str) -> bool:
    if host.endswith(".local"):
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _mid(mid: str | None) -> str:
    return "no mid" if mid is None else f"mid {mid!r}"


def check_answer(offer_sdp: str, answer_sdp: str) -> None:
    """Refuse ``answer_sdp`` unless it is a usable answer to ``offer_sdp`` (module docstring).

    Raises :class:`MediaError`; its message names what is wrong.
    """
    offer = parse(offer_sdp, what="the offer")
    answer = parse(answer_sdp, what="the answer")
    if len(answer.media) != len(offer.media):
        raise MediaError(f"the answer has {len(answer.media)} media sections, "
                         f"the offer has {len(offer.media)}")
    for n, (offered, answered) in enumerate(zip(offer.media, answer.media, strict=True), 1):
        if answered.kind != offered.kind:
            raise MediaError(f"media section {n} of the answer is {answered.kind}, "
                             f"the offer's is {offered.kind}")
        if answered.mid != offered.mid:
            raise MediaError(f"media section {n} of the answer has {_mid(answered.mid)}, "
                             f"the offer's has {_mid(offered.mid)}")
    for name, what in (("fingerprint", "DTLS fingerprint"), ("ice-ufrag", "ICE username fragment"),
                       ("ice-pwd", "ICE password"), ("setup", "DTLS role")):
        _require(answer, name, what)
    _check_fingerprints(answer)
    for n, section in enumerate(answer.media, 1):
        _check_ice(answer, section)
        _check_setup(answer, section)
        if section.kind in _RTP_KINDS:
            _check_rtp(offer.media[n - 1], section, n)


def _require(answer: SessionDescription, name: str, what: str) -> None:
    """Refuse ``answer`` unless each media section has ``a=name`` or inherits it."""
    if answer.values(name):
        return
    lacking = [n for n, section in enumerate(answer.media, 1) if not section.values(name)]
    if lacking and len(lacking) == len(answer.media):
        raise MediaError(f"the answer has no {what} (a={name})")
    if lacking:
        raise MediaError(f"media section {lacking[0]} of the answer has no {what} (a={name})")


def _check_fingerprints(answer: SessionDescription) -> None:
    session = answer.values("fingerprint")
    for section in answer.media:
        algorithms: set[str] = set()
        for fingerprint in [*session, *section.values("fingerprint")]:
            m = _FINGERPRINT.fullmatch(fingerprint or "")
            algorithm = m.group(1).lower() if m else ""
            size = _DIGEST_BYTES.get(algorithm)
            if m is None or (size is not None and len(m.group(2)) != 3 * size - 1):
                raise MediaError("the answer has a malformed DTLS fingerprint (a=fingerprint "
                                 "needs a hash function and colon-separated hex bytes)")
            algorithms.add(algorithm)
        if not algorithms & set(FINGERPRINT_ALGORITHMS):
            raise MediaError("the answer's DTLS fingerprints use none of "
                             + ", ".join(FINGERPRINT_ALGORITHMS))


def _check_ice(answer: SessionDescription, section: MediaSection) -> None:
    for name, what, least in (("ice-ufrag", "ICE username fragment", 4),
                              ("ice-pwd", "ICE password", 22)):
        value = (section.values(name) or answer.values(name))[0] or ""
        if not least <= len(value) <= 256 or not _ICE_CHARS.fullmatch(value):
            raise MediaError(f"the answer's {what} (a={name}) must be {least} to 256 letters, "
                             "digits, + or /")


def _check_setup(answer: SessionDescription, section: MediaSection) -> None:
    role = (section.values("setup") or answer.values("setup"))[0]
    if role not in ("active", "passive"):
        raise MediaError("the DTLS role of an answer must be a=setup:active or "
                         f"a=setup:passive, not {role!r}")


def _check_rtp(offered: MediaSection, answered: MediaSection, n: int) -> None:
    if "rtcp-mux" not in dict(answered.attributes):
        raise MediaError(f"media section {n} of the answer does not multiplex RTCP (a=rtcp-mux)")
    if not any(
        pt in offered.formats
        and answered.rtpmap(pt) == offered.rtpmap(pt)
        and answered.rtpmap(pt) not in _REPAIR_FORMATS
        for pt in answered.formats
    ):
        raise MediaError(f"media section {n} of the answer ({answered.kind}) shares no codec "
                         "with the offer")
