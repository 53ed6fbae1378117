"""Typed errors of vio, and the one place they map to WebSocket close codes.

    VioError                      code (machine) + message (a sentence a person understands)
    ├── BadMessage                the last message was refused; the connection stays open
    ├── NotAllowed                the sender may not do that now; the connection stays open
    ├── Refusal                   the person may not be in the room: `refused`, then close
    ├── Dropped                   the server drops the connection (too slow, silent, ended)
    └── InviteRefused             staff cannot issue that family invite

Refusals with a fixed sentence take it from ``REFUSAL_TEXT`` (``refusal(code)``), so a room, a
page and an invite link say the same thing. ``close_code`` is the only mapping from an error to a
WebSocket close code; ``docs/protocol.md`` lists the same table, and a test keeps them in step.
"""

from __future__ import annotations


class VioError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class BadMessage(VioError):
    """Malformed, unknown, ill-typed or oversized message; nothing changed."""


class NotAllowed(VioError):
    """Not allowed for this sender, or not now (a moderator command from a patient, say)."""


class Refusal(VioError):
    """The person cannot enter (or stay in) this session's room."""


class Dropped(VioError):
    """The server ends the connection."""


class InviteRefused(VioError):
    """A family invite cannot be issued; the message says why, for staff."""

    def __init__(self, message: str) -> None:
        super().__init__("invite-refused", message)


# Neutral wording: a lobby or invite never says what the program treats (DESIGN.md, Consent).
REFUSAL_TEXT: dict[str, str] = {
    "not-signed-in": "Please open your personal link again, or sign in, to join this session.",
    "signed-out": "You have been signed out. Please open your personal link again, or sign in, "
                  "to rejoin.",
    "no-such-session": "We can't find this session.",
    "consent-missing": "Before you can join, we need your signed consent for video sessions. "
                       "Please contact your care team.",
    "session-cancelled": "This session was cancelled.",
    "session-ended": "This session has ended.",
    "removed": "A therapist has removed you from this session.",
    "room-locked": "The therapist has closed this session to newcomers. "
                   "Please contact your care team.",
    "room-full": "This session is full right now.",
    "check-in-needed": "Please confirm where you are right now before joining.",
    "denied": "The therapist could not let you in this time.",
    "invite-in-use": "This invitation is already in use on another device.",
    "invite-malformed": "This link is not complete. Please copy the whole link and try again.",
    "invite-unknown": "We don't recognise this link. Please ask the person who invited you "
                      "for a new one.",
    "invite-expired": "This invitation has expired.",
    "invite-revoked": "This invitation has been withdrawn.",
    "consent-revoked": "This invitation is no longer valid.",
    "wrong-session": "This invitation is for a different session.",
    "too-early": "The session has not opened yet.",
    "media-unavailable": "The video service is busy right now. Please try again in a minute.",
}


def refusal(code: str) -> Refusal:
    """The refusal ``code`` with its one sentence."""
    return Refusal(code, REFUSAL_TEXT[code])


NORMAL = 1000
MESSAGE_TOO_BIG = 1009
INTERNAL_ERROR = 1011

CLOSE_CODES: dict[str, int] = {
    # refusals
    "not-signed-in": 4401,
    "signed-out": 4401,
    "not-on-roster": 4403,
    "consent-missing": 4403,
    "check-in-needed": 4412,
    "removed": 4403,
    "denied": 4403,
    "invite-in-use": 4403,
    "invite-revoked": 4403,
    "invite-expired": 4410,
    "consent-revoked": 4403,
    "wrong-session": 4403,
    "no-such-session": 4404,
    "too-early": 4425,
    "session-ended": 4410,
    "session-cancelled": 4410,
    "room-locked": 4423,
    "room-full": 4409,
    "media-unavailable": 4503,
    # drops
    "protocol-violation": 4400,
    "idle-timeout": 4408,
    "too-slow": 4429,
    "replaced": 4001,
    "ended": 4410,
    "left": NORMAL,
    "server-restart": 1012,
    "server-error": INTERNAL_ERROR,
}


def close_code(error: VioError) -> int:
    return CLOSE_CODES.get(error.code, INTERNAL_ERROR if isinstance(error, Dropped) else 4403)
