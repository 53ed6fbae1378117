"""The signaling protocol's messages: parsing and validation, with no I/O.

``parse`` turns one WebSocket text frame into a ``ClientMessage`` or raises ``BadMessage``.
Each message type lists its fields and their types in ``CLIENT_MESSAGES``;
``docs/protocol.md`` documents every one of them (a test keeps the two in step).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from vio.errors import BadMessage

PROTOCOL_VERSION = 1
CHAT_MAX_CHARS = 1000
REASON_MAX_CHARS = 500
NAME_MAX_CHARS = 60
SDP_MAX_CHARS = 60_000

# type -> {field: (python type, required)}
FieldSpec = dict[str, tuple[type, bool]]
CLIENT_MESSAGES: dict[str, FieldSpec] = {
    "join": {"v": (int, True), "name": (str, False)},
    "answer": {"sdp": (str, True)},
    "media": {"audio": (bool, True), "video": (bool, True)},
    "chat": {"text": (str, True), "to": (str, True)},
    "ping": {},
    "leave": {},
    "admit": {"participant_id": (str, True)},
    "deny": {"participant_id": (str, True)},
    "admit-all": {},
    "mute": {"participant_id": (str, True)},
    "lock-mic": {"participant_id": (str, True)},
    "unlock-mic": {"participant_id": (str, True)},
    "stop-video": {"participant_id": (str, True)},
    "remove": {"participant_id": (str, True), "reason": (str, True)},
    "lock": {},
    "unlock": {},
    "extend": {"minutes": (int, True)},
    "end": {},
    "safety-card": {"participant_id": (str, True)},
    "side-room": {"participant_id": (str, True)},
    "main-room": {"participant_id": (str, True)},
}

SERVER_MESSAGES = (
    "welcome", "waiting", "offer", "participant-joined", "participant-left", "waiting-list",
    "speaking", "media-state", "moderated", "chat", "time", "warning", "pong", "error",
    "refused", "ended", "room-state", "safety-card", "side-room", "side-room-state",
    "join-refused", "roster", "video-paused",
)

MODERATOR_MESSAGES = frozenset({
    "admit", "deny", "admit-all", "mute", "lock-mic", "unlock-mic", "stop-video", "remove",
    "lock", "unlock", "extend", "end", "safety-card", "side-room", "main-room",
})


@dataclass(frozen=True)
class ClientMessage:
    type: str
    fields: dict[str, Any]

    def __getitem__(self, name: str) -> Any:
        return self.fields[name]

    def get(self, name: str, default: Any = None) -> Any:
        return self.fields.get(name, default)


def parse(raw: str | bytes, max_bytes: int) -> ClientMessage:
    """Validate one client frame. Unknown fields are ignored; anything else wrong is refused."""
    size = len(raw.encode() if isinstance(raw, str) else raw)
    if size > max_bytes:
        raise BadMessage("message-too-large",
                         f"Messages may be at most {max_bytes} bytes; this one was {size}.")
    if isinstance(raw, bytes):
        raise BadMessage("bad-message", "Messages must be JSON text, not binary.")
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        raise BadMessage("bad-message", "The message is not valid JSON.") from None
    if not isinstance(data, dict):
        raise BadMessage("bad-message", "A message must be a JSON object.")
    kind = data.get("type")
    if not isinstance(kind, str):
        raise BadMessage("bad-message", "A message needs a string field 'type'.")
    spec = CLIENT_MESSAGES.get(kind)
    if spec is None:
        raise BadMessage("unknown-type", f"Unknown message type {kind[:40]!r}.")
    fields: dict[str, Any] = {}
    for name, (expected, required) in spec.items():
        if name not in data:
            if required:
                raise BadMessage("bad-message", f"Message {kind!r} needs field {name!r}.")
            continue
        value = data[name]
        # bool is a subclass of int: keep them apart.
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise BadMessage("bad-message",
                             f"Field {name!r} must be {_type_name(expected)}.")
        fields[name] = value
    _check_values(kind, fields)
    return ClientMessage(kind, fields)


def _type_name(kind: type) -> str:
    return {str: "a string", int: "a whole number", bool: "true or false"}.get(
        kind, kind.__name__)


def _check_values(kind: str, fields: dict[str, Any]) -> None:
    if kind == "join" and fields["v"] != PROTOCOL_VERSION:
        raise BadMessage("unsupported-version",
                         f"This server speaks protocol version {PROTOCOL_VERSION}.")
    if kind == "join" and "name" in fields:
        name = " ".join(fields["name"].split())
        if not 1 <= len(name) <= NAME_MAX_CHARS:
            raise BadMessage("bad-message", f"A name has 1 to {NAME_MAX_CHARS} characters.")
        fields["name"] = name
    if kind == "answer" and not 0 < len(fields["sdp"]) <= SDP_MAX_CHARS:
        raise BadMessage("bad-message", "The session description is empty or too long.")
    if kind == "chat":
        if fields["to"] not in ("room", "therapists"):
            raise BadMessage("bad-message", "Chat goes to 'room' or 'therapists'.")
        if not 1 <= len(fields["text"].strip()) <= CHAT_MAX_CHARS:
            raise BadMessage("bad-message", f"A chat message has 1 to {CHAT_MAX_CHARS} characters.")
    if kind == "remove" and not 1 <= len(fields["reason"].strip()) <= REASON_MAX_CHARS:
        raise BadMessage("bad-message", "Removing someone needs a short reason.")
    if kind == "extend" and fields["minutes"] <= 0:
        raise BadMessage("bad-message", "Extend by a positive number of minutes.")


def message(kind: str, **fields: Any) -> dict[str, Any]:
    """A server message (a JSON-ready dict)."""
    assert kind in SERVER_MESSAGES, kind
    return {"type": kind, **fields}
