"""The clinic's SMTP relay: where it is (``VIO_SMTP_URL``), one delivery, and the doctor's probe.

``parse_relay_url`` reads the URL (pure): ``smtp+starttls://`` (STARTTLS required, port 587 by
default), ``smtps://`` (TLS from the first byte, 465) or ``smtp://`` (no TLS, 25), the last
only to a relay on this machine's loopback. ``deliver`` hands one message to the relay with
aiosmtplib and says what became of it, as a ``Reply`` that ``classify`` decides (pure): the
relay took it, refused it for good (a 5xx to the recipient or the message: the message
*bounced*), or could not be asked or answered for now (unreachable, TLS, a 4xx, or a 5xx about
our own sign-in or sender, which is the relay's set-up and not the recipient's fault): *retry*.

Nothing here logs; a ``Reply``'s text is what staff see on the patient's messages page, and
never holds the relay's password.
"""

from __future__ import annotations

import asyncio
import enum
import ipaddress
import ssl
import urllib.parse
from dataclasses import dataclass, field
from email.message import EmailMessage

import aiosmtplib

from vio.settings import without_password

SCHEMES = {"smtp+starttls": 587, "smtps": 465, "smtp": 25}
LOOPBACK_NAMES = ("localhost",)
PERMANENT = 5  # first digit of a reply that will not change on a retry (RFC 5321 4.2.1)
TEMPORARY = 4


class Security(enum.StrEnum):
    STARTTLS = "starttls"
    TLS = "tls"
    NONE = "none"


SECURITY_OF_SCHEME = {"smtp+starttls": Security.STARTTLS, "smtps": Security.TLS,
                      "smtp": Security.NONE}


@dataclass(frozen=True)
class Relay:
    host: str
    port: int
    security: Security
    username: str = ""
    password: str = field(default="", repr=False)
    url: str = field(default="", repr=False)

    @property
    def shown(self) -> str:
        """The URL as logs and the doctor may show it: without its password."""
        return without_password(self.url)


def _is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_relay_url(url: str) -> Relay:
    """``VIO_SMTP_URL`` as a ``Relay``; ValueError with a sentence saying what is wrong."""
    scheme, sep, _ = url.partition("://")
    if not sep or scheme.lower() not in SCHEMES:
        raise ValueError("must start with smtp+starttls://, smtps:// or smtp:// (a relay on "
                         "this machine)")
    scheme = scheme.lower()
    try:
        parts = urllib.parse.urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        raise ValueError("is not an SMTP URL such as "
                         "smtp+starttls://USER:PASSWORD@mail.example.org:587") from None
    if not host:
        raise ValueError("names no host: smtp+starttls://USER:PASSWORD@mail.example.org:587")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError("must hold only the user, password, host and port")
    security = SECURITY_OF_SCHEME[scheme]
    if security is Security.NONE and not _is_loopback(host):
        raise ValueError("smtp:// sends messages and password unencrypted, so only to a relay "
                         "on this machine (127.0.0.1); use smtp+starttls:// or smtps://")
    username = urllib.parse.unquote(parts.username or "")
    password = urllib.parse.unquote(parts.password or "")
    if password and not username:
        raise ValueError("has a password but no user name")
    return Relay(host=host, port=port or SCHEMES[scheme], security=security,
                 username=username, password=password, url=url)


# --- what became of a message ------------------------------------------------------------

class Outcome(enum.StrEnum):
    SENT = "sent"
    BOUNCED = "bounced"
    RETRY = "retry"


@dataclass(frozen=True)
class Reply:
    outcome: Outcome
    code: int | None
    text: str


class Stage(enum.StrEnum):
    """Where in the conversation the relay answered."""

    RECIPIENT = "recipient"  # RCPT TO: about the address
    MESSAGE = "message"  # DATA: about the message
    RELAY = "relay"  # greeting, EHLO, STARTTLS, AUTH, MAIL FROM: about our set-up


def classify(stage: Stage, code: int | None, text: str) -> Reply:
    """A relay's answer as an outcome: 2xx sent; 5xx about the recipient or the message
    bounced; everything else (4xx, no answer, our own set-up refused) tried again."""
    first = code // 100 if code is not None else None
    if first == 2:
        return Reply(Outcome.SENT, code, text)
    if first == PERMANENT and stage in (Stage.RECIPIENT, Stage.MESSAGE):
        return Reply(Outcome.BOUNCED, code, text)
    return Reply(Outcome.RETRY, code, text)


def _reply_text(code: int | None, message: str, limit: int) -> str:
    text = " ".join(message.split())
    return (f"{code} {text}" if code is not None else text)[:limit]


def tls_context(ca_file: str) -> ssl.SSLContext:
    """Certificates checked against ``VIO_SMTP_CA_FILE``, else the system's CAs."""
    return ssl.create_default_context(cafile=ca_file or None)


def _client(relay: Relay, timeout: float, ca_file: str) -> aiosmtplib.SMTP:
    return aiosmtplib.SMTP(
        hostname=relay.host, port=relay.port, timeout=timeout,
        use_tls=relay.security is Security.TLS,
        start_tls=relay.security is Security.STARTTLS,
        tls_context=tls_context(ca_file) if relay.security is not Security.NONE else None,
        username=relay.username or None, password=relay.password or None)


async def deliver(relay: Relay, message: EmailMessage, *, within: float, ca_file: str,
                  limit: int) -> Reply:
    """Hand ``message`` to the relay; never raises for anything the relay or network does.

    The whole conversation has ``within`` seconds (each step too); ``limit`` caps the reply
    text."""
    try:
        async with asyncio.timeout(within):
            client = _client(relay, within, ca_file)
            async with client:
                refused, answer = await client.send_message(message)
    except aiosmtplib.SMTPRecipientsRefused as exc:
        first = exc.recipients[0] if exc.recipients else None
        code = first.code if first is not None else None
        return classify(Stage.RECIPIENT, code,
                        _reply_text(code, first.message if first else "refused", limit))
    except aiosmtplib.SMTPRecipientRefused as exc:
        return classify(Stage.RECIPIENT, exc.code, _reply_text(exc.code, exc.message, limit))
    except aiosmtplib.SMTPDataError as exc:
        return classify(Stage.MESSAGE, exc.code, _reply_text(exc.code, exc.message, limit))
    except aiosmtplib.SMTPAuthenticationError as exc:
        return classify(Stage.RELAY, exc.code, _reply_text(
            exc.code, f"the relay refused vio's sign-in: {exc.message}", limit))
    except aiosmtplib.SMTPResponseException as exc:
        return classify(Stage.RELAY, exc.code, _reply_text(exc.code, exc.message, limit))
    except (aiosmtplib.SMTPException, ssl.SSLError, OSError, TimeoutError) as exc:
        return classify(Stage.RELAY, None, _reply_text(
            None, f"the relay could not be reached ({_why(exc)})", limit))
    if refused:
        code, text = next(iter(refused.values()))
        return classify(Stage.RECIPIENT, code, _reply_text(code, text, limit))
    return classify(Stage.MESSAGE, 250, _reply_text(250, answer, limit))


def _why(exc: BaseException) -> str:
    """A short reason that names no address: the kind of failure, and the OS's words."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate not trusted: {exc.verify_message}"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    if isinstance(exc, aiosmtplib.SMTPException) and exc.message:
        return " ".join(exc.message.split())
    return type(exc).__name__


# --- the doctor's probe ------------------------------------------------------------------

@dataclass(frozen=True)
class Probe:
    ok: bool
    message: str


async def probe(relay: Relay, *, within: float, ca_file: str) -> Probe:
    """Connect, secure the connection as the URL says, sign in, and say goodbye: no mail."""
    try:
        async with asyncio.timeout(within):
            client = _client(relay, within, ca_file)
            async with client:
                cipher = client.get_transport_info("cipher")
    except aiosmtplib.SMTPAuthenticationError as exc:
        return Probe(False, f"{relay.shown} refused the user name and password ({exc.code})")
    except aiosmtplib.SMTPResponseException as exc:
        return Probe(False, f"{relay.shown} answered {exc.code}: "
                            f"{' '.join(exc.message.split())}")
    except (aiosmtplib.SMTPException, ssl.SSLError, OSError, TimeoutError) as exc:
        return Probe(False, f"cannot reach {relay.shown} ({_why(exc)})")
    how = {Security.STARTTLS: "STARTTLS", Security.TLS: "TLS",
           Security.NONE: "no TLS (loopback)"}[relay.security]
    version = f", {cipher[1]}" if isinstance(cipher, tuple) and len(cipher) > 1 else ""
    return Probe(True, f"{relay.shown} answers with {how}{version}"
                       f"{', and took the user name and password' if relay.username else ''}")
