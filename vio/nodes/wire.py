"""Messages between nodes: sealed by the sender, checked and validated by the receiver.

Redis is not trusted (it carries what anyone with access to it publishes), so everything a node
publishes on a vio channel (``{prefix}:to:{node}``, ``{prefix}:events``) is one sealed message:

    vio1.<HMAC-SHA256, hex>.<payload>

The payload is JSON, ``{"from": sender node, "seq": n, "at": milliseconds, "body": {...}}``. The
MAC, under the install's cluster key (``vio.keys``, derived from ``VIO_SECRET_KEY``), covers the
channel's name and the payload, so a message cannot be moved to another channel either.

``Inbound.open`` accepts a message only when, in this order:

- it is sealed at all (``unsigned``), and its MAC checks (``bad-mac``);
- its envelope is well formed (``malformed``);
- its time is within ``max_age`` of the receiver's clock, either way (``stale``);
- its sender's sequence number was never accepted before (``replayed``): for each sender the
  highest number seen and the numbers accepted within ``REPLAY_WINDOW`` below it are kept, and
  anything older is refused;
- its body has exactly one of the shapes in ``SCHEMAS`` allowed on that kind of channel, every
  field of its type and within its size (``malformed``).

A refused message raises ``Rejected`` with that reason and has no effect. Nothing here logs: the
node counts and logs reasons and channels, never content (which may hold PHI).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

MAGIC = b"vio1."
MAC_HEX = 64  # SHA-256, in hex
REPLAY_WINDOW = 4096  # sequence numbers kept per sender below its highest
MAX_SENDERS = 1024  # senders remembered; those silent longer than the window of age go first
ID_MAX = 120  # node ids, connection ids
CODE_MAX = 40
TEXT_MAX = 1000
ORDINAL_MAX = 2 ** 62


class Reason(enum.StrEnum):
    UNSIGNED = "unsigned"
    BAD_MAC = "bad-mac"
    MALFORMED = "malformed"
    STALE = "stale"
    REPLAYED = "replayed"


class Rejected(Exception):
    """A message that is not taken; ``reason`` says why (never what it held)."""

    def __init__(self, reason: Reason) -> None:
        super().__init__(reason.value)
        self.reason = reason


class Channel(enum.StrEnum):
    NODE = "node"  # {prefix}:to:{node}: relayed connections, one node to another
    EVENTS = "events"  # {prefix}:events: to every node


# --- shapes ------------------------------------------------------------------------------

Check = Callable[[Any], bool]


def text(most: int) -> Check:
    return lambda value: isinstance(value, str) and len(value) <= most


def ordinal(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value < ORDINAL_MAX


def flag(value: Any) -> bool:
    return isinstance(value, bool)


def one_of(*allowed: str) -> Check:
    return lambda value: isinstance(value, str) and value in allowed


def optional(check: Check) -> Check:
    return lambda value: value is None or check(value)


def message_object(value: Any) -> bool:
    return isinstance(value, dict) and isinstance(value.get("type"), str)


def schemas(max_frame_chars: int) -> dict[Channel, dict[str, dict[str, Check]]]:
    """Every body a channel carries: its ``op`` and the exact fields it has."""
    conn = text(ID_MAX)
    return {
        Channel.NODE: {
            # edge -> owner: a connection, by the sign-in it came with (looked up by the owner)
            "open": {"conn": conn, "edge": text(ID_MAX), "session": ordinal, "sign_in": ordinal,
                     "name": optional(text(200))},
            "frame": {"conn": conn, "raw": text(max_frame_chars), "binary": flag},
            "close": {"conn": conn},
            # owner -> edge: what the room says to the connection, and its end
            "send": {"conn": conn, "message": message_object},
            "closed": {"conn": conn, "kind": one_of("refusal", "dropped"),
                       "code": text(CODE_MAX), "text": text(TEXT_MAX)},
        },
        Channel.EVENTS: {
            # someone's standing changed in the records: every room re-checks its people
            "recheck": {},
        },
    }


def _valid_body(body: Any, allowed: Mapping[str, Mapping[str, Check]]) -> bool:
    if not isinstance(body, dict) or not isinstance(body.get("op"), str):
        return False
    shape = allowed.get(body["op"])
    if shape is None or body.keys() - {"op"} != shape.keys():
        return False
    return all(check(body[name]) for name, check in shape.items())


# --- sealing and opening ---------------------------------------------------------------------

class Mac:
    """HMAC-SHA256 (RFC 2104) of a channel's name and a payload under one key, in hex. The
    padded key's two hash states are made once; each message copies them (a one-shot
    ``hmac.digest`` sets its key up again every time)."""

    def __init__(self, key: bytes) -> None:
        block = hashlib.sha256().block_size
        padded = (hashlib.sha256(key).digest() if len(key) > block else key).ljust(block, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in padded))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in padded))

    def __call__(self, channel: bytes, payload: bytes) -> bytes:
        inner = self._inner.copy()
        inner.update(channel + b"\n")
        inner.update(payload)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.hexdigest().encode()


class Outbound:
    """One node's sender: numbers and seals what it publishes."""

    def __init__(self, key: bytes, sender: str) -> None:
        self._mac = Mac(key)
        self.sender = sender
        self._seq = 0

    def seal(self, channel: str, body: Mapping[str, Any], now_ms: int) -> bytes:
        self._seq += 1
        payload = json.dumps({"from": self.sender, "seq": self._seq, "at": now_ms,
                              "body": body}, separators=(",", ":")).encode()
        return MAGIC + self._mac(channel.encode(), payload) + b"." + payload


@dataclass
class _Seen:
    highest: int
    last_ms: int
    numbers: set[int] = field(default_factory=set)


@dataclass(frozen=True)
class Message:
    sender: str
    body: dict[str, Any]


class Inbound:
    """One node's receiver: refuses what is unsigned, forged, stale, replayed or malformed."""

    def __init__(self, key: bytes, *, max_age_ms: int, max_frame_chars: int) -> None:
        self._mac = Mac(key)
        self.max_age_ms = max_age_ms
        self._schemas = schemas(max_frame_chars)
        # A frame's text may double when escaped as JSON; the envelope adds a little.
        self.max_bytes = 2 * max_frame_chars + 4096
        self._seen: dict[str, _Seen] = {}

    def open(self, channel: str, kind: Channel, data: bytes, now_ms: int) -> Message:
        if not data.startswith(MAGIC) or data[len(MAGIC) + MAC_HEX:][:1] != b".":
            raise Rejected(Reason.UNSIGNED)
        if len(data) > self.max_bytes:
            raise Rejected(Reason.MALFORMED)
        mac = data[len(MAGIC):len(MAGIC) + MAC_HEX]
        payload = data[len(MAGIC) + MAC_HEX + 1:]
        if not hmac.compare_digest(mac, self._mac(channel.encode(), payload)):
            raise Rejected(Reason.BAD_MAC)
        try:
            envelope = json.loads(payload)
        except ValueError:
            raise Rejected(Reason.MALFORMED) from None
        if not (isinstance(envelope, dict) and envelope.keys() == {"from", "seq", "at", "body"}
                and text(ID_MAX)(envelope["from"]) and ordinal(envelope["seq"])
                and ordinal(envelope["at"])):
            raise Rejected(Reason.MALFORMED)
        if abs(now_ms - envelope["at"]) > self.max_age_ms:
            raise Rejected(Reason.STALE)
        self._take(envelope["from"], envelope["seq"], now_ms)
        if not _valid_body(envelope["body"], self._schemas[kind]):
            raise Rejected(Reason.MALFORMED)
        return Message(envelope["from"], envelope["body"])

    def _take(self, sender: str, seq: int, now_ms: int) -> None:
        """Note ``seq`` as accepted from ``sender``, or refuse it as a replay."""
        seen = self._seen.get(sender)
        if seen is None:
            if len(self._seen) >= MAX_SENDERS:
                self._forget(now_ms)
            self._seen[sender] = _Seen(highest=seq, last_ms=now_ms, numbers={seq})
            return
        if seq <= seen.highest - REPLAY_WINDOW or seq in seen.numbers:
            raise Rejected(Reason.REPLAYED)
        seen.numbers.add(seq)
        seen.last_ms = now_ms
        if seq > seen.highest:
            seen.highest = seq
            if len(seen.numbers) > 2 * REPLAY_WINDOW:
                floor = seen.highest - REPLAY_WINDOW
                seen.numbers = {n for n in seen.numbers if n > floor}

    def _forget(self, now_ms: int) -> None:
        """Forget senders silent for longer than a message may be old (their messages would
        be refused as stale anyway); if none is, the one silent longest."""
        quiet = [s for s, seen in self._seen.items() if now_ms - seen.last_ms > self.max_age_ms]
        for sender in quiet or [min(self._seen, key=lambda s: self._seen[s].last_ms)]:
            del self._seen[sender]
