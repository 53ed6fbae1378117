"""Typed errors of the signaling connection, and the one place they map to close codes.

    VioError                      code (machine) + message (a sentence a person understands)
    ├── BadMessage                the last message was refused; the connection stays open
    ├── NotAllowed                the sender's role may not do that; the connection stays open
    ├── Refusal                   the person may not be in the room: `refused`, then close
    └── Dropped                   the server drops the connection (too slow, silent, ended)

``close_code`` is the only mapping from an error to a WebSocket close code; ``docs/protocol.md``
lists the same table, and a test keeps them in step.
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
    """A moderator command from someone who is not a therapist of this session."""


class Refusal(VioError):
    """The person cannot enter (or stay in) this session's room."""


class Dropped(VioError):
    """The server ends the connection."""


NORMAL = 1000
MESSAGE_TOO_BIG = 1009
INTERNAL_ERROR = 1011

CLOSE_CODES: dict[str, int] = {
    # refusals
    "not-signed-in": 4401,
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
