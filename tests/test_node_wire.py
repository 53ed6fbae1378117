"""Messages between nodes (``vio.nodes.wire``): what is sealed opens; nothing else does."""

from __future__ import annotations

import hmac
import json

import pytest

from vio.keys import InstallKeys
from vio.nodes.placement import lease_value, parse_lease
from vio.nodes.wire import (
    MAC_HEX,
    MAGIC,
    REPLAY_WINDOW,
    Channel,
    Inbound,
    Mac,
    Outbound,
    Reason,
    Rejected,
)

KEY = InstallKeys.derive("wire-test").cluster
OTHER_KEY = InstallKeys.derive("another install").cluster
TO_B = "vio:to:node-b"
EVENTS = "vio:events"
NOW = 1_800_000_000_000
MAX_AGE_MS = 30_000
OPEN = {"op": "open", "conn": "node-a/1f", "edge": "node-a", "session": 7, "sign_in": 3,
        "name": None}


def inbound() -> Inbound:
    return Inbound(KEY, max_age_ms=MAX_AGE_MS, max_frame_chars=1024)


def refused(receiver: Inbound, data: bytes, channel: str = TO_B,
            kind: Channel = Channel.NODE, now: int = NOW) -> Reason:
    with pytest.raises(Rejected) as caught:
        receiver.open(channel, kind, data, now)
    return caught.value.reason


@pytest.mark.parametrize("key", [KEY, b"short", b"k" * 64, b"k" * 65, b""])
def test_the_mac_is_hmac_sha256_of_the_channel_and_the_payload(key):
    payload = json.dumps(OPEN).encode()
    expected = hmac.digest(key, TO_B.encode() + b"\n" + payload, "sha256").hex().encode()
    assert Mac(key)(TO_B.encode(), payload) == expected
    sealed = Outbound(key or b"\0", "node-a").seal(TO_B, OPEN, NOW)
    mac, payload = sealed[len(MAGIC):len(MAGIC) + MAC_HEX], sealed[len(MAGIC) + MAC_HEX + 1:]
    assert mac == hmac.digest(key or b"\0", TO_B.encode() + b"\n" + payload,
                              "sha256").hex().encode()


def test_a_sealed_message_opens_once_on_its_own_channel():
    sender, receiver = Outbound(KEY, "node-a"), inbound()
    data = sender.seal(TO_B, OPEN, NOW)
    message = receiver.open(TO_B, Channel.NODE, data, NOW + 5)
    assert message.sender == "node-a" and message.body == OPEN
    assert refused(receiver, data) is Reason.REPLAYED
    moved = sender.seal(TO_B, OPEN, NOW)
    assert refused(inbound(), moved, channel="vio:to:node-c") is Reason.BAD_MAC


@pytest.mark.parametrize("data", [
    json.dumps(OPEN).encode(),  # what a stranger with Redis access publishes
    b"\xff\x00 not json at all",
    b"",
    b"vio1.short",
])
def test_anything_unsealed_is_refused(data):
    assert refused(inbound(), data) is Reason.UNSIGNED


def test_a_forged_or_altered_seal_is_refused():
    forged = Outbound(OTHER_KEY, "node-a").seal(TO_B, OPEN, NOW)
    assert refused(inbound(), forged) is Reason.BAD_MAC
    genuine = Outbound(KEY, "node-a").seal(TO_B, OPEN, NOW)
    altered = genuine.replace(b'"sign_in":3', b'"sign_in":4')
    assert altered != genuine and refused(inbound(), altered) is Reason.BAD_MAC


def test_old_and_future_messages_are_stale():
    sender = Outbound(KEY, "node-a")
    assert refused(inbound(), sender.seal(TO_B, OPEN, NOW - MAX_AGE_MS - 1)) is Reason.STALE
    assert refused(inbound(), sender.seal(TO_B, OPEN, NOW + MAX_AGE_MS + 1)) is Reason.STALE
    inbound().open(TO_B, Channel.NODE, sender.seal(TO_B, OPEN, NOW - MAX_AGE_MS), NOW)


def test_replays_are_refused_in_any_order():
    sender, receiver = Outbound(KEY, "node-a"), inbound()
    sealed = [sender.seal(TO_B, OPEN, NOW) for _ in range(REPLAY_WINDOW + 10)]
    receiver.open(TO_B, Channel.NODE, sealed[-1], NOW)
    receiver.open(TO_B, Channel.NODE, sealed[-3], NOW)  # late, but never seen: taken
    assert refused(receiver, sealed[-3]) is Reason.REPLAYED
    assert refused(receiver, sealed[0]) is Reason.REPLAYED  # older than the window
    other = Outbound(KEY, "node-c")  # each sender is numbered on its own
    receiver.open(TO_B, Channel.NODE, other.seal(TO_B, OPEN, NOW), NOW)


@pytest.mark.parametrize("body", [
    {**OPEN, "person": {"role": "therapist", "is_admin": True}},  # a field too many
    {k: v for k, v in OPEN.items() if k != "sign_in"},  # one missing
    {**OPEN, "sign_in": True},
    {**OPEN, "sign_in": "3"},
    {**OPEN, "session": 0},
    {**OPEN, "name": "x" * 201},
    {"op": "frame", "conn": "node-a/1f", "raw": "x" * 1025, "binary": False},
    {"op": "frame", "conn": "node-a/1f", "raw": "{}", "binary": 0},
    {"op": "send", "conn": "node-a/1f", "message": ["not", "an", "object"]},
    {"op": "closed", "conn": "node-a/1f", "kind": "other", "code": "x", "text": "y"},
    {"op": "recheck"},  # an event, not a relay message
    {"op": "remove", "field": "patient_id", "value": 1, "code": "removed", "keep_out": True},
    {"conn": "node-a/1f"},
    ["open"],
])
def test_a_body_of_the_wrong_shape_is_malformed(body):
    data = Outbound(KEY, "node-a").seal(TO_B, body, NOW)
    assert refused(inbound(), data) is Reason.MALFORMED


def test_events_carry_only_a_recheck():
    sender = Outbound(KEY, "node-a")
    message = inbound().open(EVENTS, Channel.EVENTS, sender.seal(EVENTS, {"op": "recheck"}, NOW),
                             NOW)
    assert message.body == {"op": "recheck"}
    forged_remove = sender.seal(EVENTS, {"op": "remove", "field": "staff_id", "value": 1,
                                         "code": "removed", "text": "", "keep_out": True}, NOW)
    assert refused(inbound(), forged_remove, EVENTS, Channel.EVENTS) is Reason.MALFORMED


def test_an_oversized_message_is_refused_unread():
    receiver = inbound()
    big = Outbound(KEY, "node-a").seal(TO_B, {"op": "frame", "conn": "c", "raw": "x" * 10_000,
                                              "binary": False}, NOW)
    assert len(big) > receiver.max_bytes
    assert refused(receiver, big) is Reason.MALFORMED


def test_a_lease_names_its_node_and_epoch():
    assert parse_lease(lease_value("host-12-ab", 7).encode()) == ("host-12-ab", 7)
    assert parse_lease(None) is None
    assert parse_lease(b"host-12-ab") is None
    assert parse_lease(b"host-12-ab x") is None
