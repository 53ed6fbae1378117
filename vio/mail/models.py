"""The outbox: every message vio means to send, written in the transaction that causes it.

A row is queued with a ``dedupe_key`` (unique: the same reminder, change or invite is queued
once, whichever node sees it first) and a ``message_id`` (the ``Message-ID`` header, fixed at
queueing, so a message sent again after a crash is recognisably the same message). A node
takes a row for sending by setting ``claimed_by``, ``claim_token`` and ``claimed_until``; a
row whose claim has lapsed (its node died) is taken again. ``attempts`` counts the tries;
``reply_code`` and ``reply_text`` keep the relay's last answer, which staff see.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Enum, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from vio.models import Base

ADDRESS_MAX_CHARS = 320  # RFC 5321's longest path
REPLY_MAX_CHARS = 500
SEALED_LINK_MAX_CHARS = 600


class MessageKind(enum.StrEnum):
    REMINDER = "reminder"  # before a session (``VIO_MAIL_REMINDER_MINUTES``)
    ROOM_OPEN = "room-open"  # when the session's room opens
    SESSION_MOVED = "session-moved"
    SESSION_CANCELLED = "session-cancelled"
    FAMILY_INVITE = "family-invite"


class MessageStatus(enum.StrEnum):
    QUEUED = "queued"  # waiting for its time, a sender, or a retry
    SENT = "sent"  # the relay took it (250)
    BOUNCED = "bounced"  # the relay refused it for good (5xx)
    FAILED = "failed"  # no try of ``VIO_MAIL_MAX_ATTEMPTS`` got through
    WITHDRAWN = "withdrawn"  # no longer to be sent: consent gone, session over or cancelled


def _enum(cls: type[enum.Enum]) -> Enum:
    return Enum(cls, native_enum=False, length=32, values_callable=lambda e: [m.value for m in e])


class OutboxMessage(Base):
    __tablename__ = "outbox_messages"
    __table_args__ = (Index("ix_outbox_messages_status_next_attempt_at", "status",
                            "next_attempt_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    program_id: Mapped[int] = mapped_column(ForeignKey("programs.id"), index=True)
    kind: Mapped[MessageKind] = mapped_column(_enum(MessageKind))
    dedupe_key: Mapped[str] = mapped_column(String(160), unique=True)
    message_id: Mapped[str] = mapped_column(String(250), unique=True)
    # The patient the message concerns: its recipient, or the patient whose family member is.
    patient_id: Mapped[int | None] = mapped_column(ForeignKey("patients.id"), index=True)
    family_member_id: Mapped[int | None] = mapped_column(ForeignKey("family_members.id"))
    session_id: Mapped[int | None] = mapped_column(ForeignKey("sessions.id"), index=True)
    to_address: Mapped[str] = mapped_column(String(ADDRESS_MAX_CHARS))
    status: Mapped[MessageStatus] = mapped_column(_enum(MessageStatus),
                                                  default=MessageStatus.QUEUED)
    created_at: Mapped[datetime]
    next_attempt_at: Mapped[datetime]
    # Not sent by then, it is withdrawn (a reminder whose session has begun).
    expires_at: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    claim_token: Mapped[str | None] = mapped_column(String(64))
    claimed_until: Mapped[datetime | None]
    # A way-in link the message carries, sealed under the install's at-rest key
    # (``vio.mail.links``), kept only until the message is sent or given up.
    sealed_link: Mapped[str | None] = mapped_column(String(SEALED_LINK_MAX_CHARS))
    sent_at: Mapped[datetime | None]
    reply_code: Mapped[int | None]
    reply_text: Mapped[str] = mapped_column(String(REPLY_MAX_CHARS), default="")
    # Per kind: the reminder's lead (``lead_minutes``), a move's ``previous_start``, the
    # calendar ``sequence`` a change carries, a withdrawal's ``reason``.
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
