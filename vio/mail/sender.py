"""The sender: one task per server process that queues reminders as they fall due and sends
what the outbox holds, with retries and backoff.

Each round (every ``VIO_MAIL_POLL_SECONDS``, or at once when a page queued something and
called ``wake``) it queues the reminders due now, then takes messages one at a time
(``outbox.claim``) until none is due, and for each:

1. makes it ready (``letters.prepare``): withdrawn if it should no longer go, else its way-in
   link is made and sealed in the row, and committed, before anything leaves;
2. hands it to the relay (``relay.deliver``);
3. writes the outcome under its claim: *sent* (the link erased), *bounced* (a 5xx for the
   recipient or the message: the relay's reply stays on the patient's record), or tried again
   after ``retry_delay`` (``VIO_MAIL_RETRY_SECONDS``, doubling up to
   ``VIO_MAIL_RETRY_MAX_SECONDS``), *failed* after ``VIO_MAIL_MAX_ATTEMPTS``.

A process killed between 1 and 3 leaves its claim to lapse; another round (here after a
restart, or on another node) sends the message again with the same ``Message-ID``.

Log lines name messages by row id and kind, with the relay's reply code: never an address, a
name, a link or the relay's password.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from vio.clock import Clock
from vio.mail import letters, outbox
from vio.mail.compose import compose
from vio.mail.due import WITHDRAWAL_TEXT, Withdrawal, retry_delay
from vio.mail.models import REPLY_MAX_CHARS, MessageStatus, OutboxMessage
from vio.mail.relay import Outcome, Relay, Reply, deliver, parse_relay_url
from vio.security import Signer
from vio.settings import Settings

log = logging.getLogger("vio.mail")


class MailSender:
    """Sends the outbox through the clinic's relay (``VIO_SMTP_URL``)."""

    def __init__(self, settings: Settings, clock: Clock,
                 db: async_sessionmaker[AsyncSession]) -> None:
        self.settings = settings
        self.clock = clock
        self.db = db
        self.relay: Relay = parse_relay_url(settings.smtp_url)
        self.signer = Signer(settings.secret_key)
        self.node = f"node-{secrets.token_hex(6)}"
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="vio-mail-sender")

    def wake(self) -> None:
        """Something was queued: look now rather than at the next poll."""
        self._wake.set()

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self.round()
            except Exception as exc:  # the sender outlives a failed round; the next retries
                log.warning("mail: a round failed (%s); trying again in %g s",
                            type(exc).__name__, self.settings.mail_poll_seconds)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.mail_poll_seconds)

    async def round(self) -> int:
        """Queue the reminders due now, then send every message due; how many were handled."""
        async with self.db() as db:
            queued = await outbox.queue_due_reminders(db, self.settings, self.clock.now())
            await db.commit()
        if queued:
            log.info("mail: %d reminder(s) queued", queued)
        handled = 0
        lease = timedelta(seconds=self.settings.mail_claim_seconds)
        while True:
            async with self.db() as db:
                taken = await outbox.claim(db, self.node, self.clock.now(), lease)
            if taken is None:
                return handled
            await self.send(*taken)
            handled += 1

    async def send(self, row_id: int, token: str) -> None:
        """Make ready, send and record one claimed message."""
        async with self.db() as db:
            row = await db.get(OutboxMessage, row_id)
            if row is None:
                return
            kind, attempts = row.kind, row.attempts
            ready = await letters.prepare(db, self.settings, self.signer, row, self.clock.now())
            if isinstance(ready, Withdrawal):
                await db.rollback()
                await self._withdraw(row_id, token, ready)
                return
            await db.commit()
        reply = await deliver(self.relay, compose(ready),
                              within=self.settings.smtp_timeout_seconds,
                              ca_file=self.settings.smtp_ca_file, limit=REPLY_MAX_CHARS)
        await self._record(row_id, token, attempts, reply)
        log.info("mail: message %d (%s) %s%s", row_id, kind.value, reply.outcome.value,
                 f" ({reply.code})" if reply.code is not None else "")

    async def _withdraw(self, row_id: int, token: str, reason: Withdrawal) -> None:
        async with self.db() as db:
            await outbox.finish(db, row_id, token, still_queued=True,
                                status=MessageStatus.WITHDRAWN,
                                sealed_link=None, reply_code=None,
                                reply_text=WITHDRAWAL_TEXT[reason])
            await db.commit()
        log.info("mail: message %d withdrawn (%s)", row_id, reason.value)

    async def _record(self, row_id: int, token: str, attempts: int, reply: Reply) -> None:
        now = self.clock.now()
        settings = self.settings
        values: dict[str, object] = {"reply_code": reply.code, "reply_text": reply.text}
        if reply.outcome is Outcome.SENT:
            values.update(status=MessageStatus.SENT, sent_at=now, sealed_link=None)
        elif reply.outcome is Outcome.BOUNCED:
            values.update(status=MessageStatus.BOUNCED, sealed_link=None)
        elif attempts >= settings.mail_max_attempts:
            values.update(status=MessageStatus.FAILED, sealed_link=None)
        else:
            values["next_attempt_at"] = now + retry_delay(
                attempts, settings.mail_retry_seconds, settings.mail_retry_max_seconds)
        async with self.db() as db:
            # What the relay took is on record whatever happened meanwhile; a retry or a
            # failure is not written over a withdrawal (an unsubscribe while it was out).
            await outbox.finish(db, row_id, token, still_queued=reply.outcome is Outcome.RETRY,
                                **values)
            await db.commit()
