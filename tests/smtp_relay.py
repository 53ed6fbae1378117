"""A real SMTP relay on loopback for the tests: aiosmtpd with STARTTLS required (a throwaway CA
and certificate made in the test's folder) and AUTH required after it.

It keeps every message it accepted, can refuse chosen recipients for good (550), can keep a
sender waiting for the reply to its DATA until told to go on (to kill a server mid-send), and
can be stopped and started again on the same port (the relay is down for a while).
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from tests.conftest import seconds
from tests.test_https import make_certificate

USER = "vio-relay"
PASSWORD = "relay-pass-Zq9"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Received:
    envelope_to: list[str]
    message: EmailMessage

    @property
    def message_id(self) -> str:
        return str(self.message["Message-ID"])

    @property
    def to(self) -> str:
        return str(self.message["To"])


@dataclass
class Mailbox:
    """The relay's handler: what it accepted, and how it treats what comes."""

    received: list[Received] = field(default_factory=list)
    refuse: dict[str, str] = field(default_factory=dict)  # address -> the 5xx reply
    hold: threading.Event | None = None  # while set to an unset event, DATA waits
    data_arrived: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          rcpt_options: list[str]) -> str:
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        """Take the message; while held, keep the sender waiting for the 250 (the relay has
        the message, the sender does not know it yet)."""
        parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        with self.lock:
            self.received.append(Received(list(envelope.rcpt_tos), parsed))
        self.data_arrived.set()
        if self.hold is not None:
            await asyncio.to_thread(self.hold.wait)
        return "250 2.0.0 Ok: queued"

    def messages(self) -> list[Received]:
        with self.lock:
            return list(self.received)

    def to(self, address: str) -> list[Received]:
        return [r for r in self.messages() if address in r.envelope_to]


def _authenticate(server: Any, session: Any, envelope: Any, mechanism: str,
                  auth_data: Any) -> AuthResult:
    ok = (isinstance(auth_data, LoginPassword) and auth_data.login == USER.encode()
          and auth_data.password == PASSWORD.encode())
    return AuthResult(success=ok, handled=False)


class Relay:
    """The relay itself: ``start``, ``stop``, ``start`` again on the same port."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.certificate = make_certificate(directory)
        self.port = port or free_port()
        self.mailbox = Mailbox()
        self.controller: Controller | None = None

    @property
    def url(self) -> str:
        return f"smtp+starttls://{USER}:{PASSWORD}@127.0.0.1:{self.port}"

    @property
    def ca_file(self) -> str:
        return str(self.certificate.ca)

    def start(self) -> Relay:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.certificate.cert, self.certificate.key)
        self.controller = Controller(
            self.mailbox, hostname="127.0.0.1", port=self.port, tls_context=context,
            require_starttls=True, authenticator=_authenticate, auth_require_tls=True,
            ready_timeout=seconds(10))
        self.controller.start()
        return self

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    def __enter__(self) -> Relay:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def until(condition: Any, within: float = 10, what: str = "condition") -> None:
    """Wait for ``condition()`` (sync or async) to hold, checking often; fail after
    ``within`` scaled seconds."""
    deadline = time.monotonic() + seconds(within)
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        await asyncio.sleep(0.02)
