"""The links a message carries, and the way-in link kept sealed while it waits to be sent.

- Unsubscribe (``/u/…``) and "I can't make it" (``/m/…``): a token signed with a namespace of
  its own, naming the message; it works ``VIO_MAIL_LINK_DAYS`` after it was made (and "I
  can't make it" never after its session, which the page checks).
- The way in: a family member's invite token, or a patient's personal link made for this
  message (``vio.clinic.issue_patient_link``, good until the session ends). Until the message
  is sent it is kept in the outbox row sealed under the install's at-rest key (AES-256-GCM,
  bound to the message's ``Message-ID``), so the database alone holds no usable link; it is
  erased when the message is sent or given up.
"""

from __future__ import annotations

import base64
import os
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vio.keys import InstallKeys
from vio.security import Signer

UNSUBSCRIBE_NAMESPACE = "mail-unsubscribe"
CANT_MAKE_IT_NAMESPACE = "mail-cant-make-it"
UNSUBSCRIBE_PATH = "/u/"
CANT_MAKE_IT_PATH = "/m/"
SEAL_VERSION = "v1"
NONCE_BYTES = 12
SECONDS_PER_DAY = 86400


class LinkUnsealable(ValueError):
    """A sealed link that does not open with this install's key."""


def _context(message_id: str) -> bytes:
    return f"vio mail link|{message_id}".encode()


def seal_link(keys: InstallKeys, message_id: str, link: str) -> str:
    nonce = os.urandom(NONCE_BYTES)
    sealed = AESGCM(keys.at_rest).encrypt(nonce, link.encode(), _context(message_id))
    return f"{SEAL_VERSION}:{base64.urlsafe_b64encode(nonce + sealed).decode()}"


def open_link(keys: InstallKeys, message_id: str, sealed: str) -> str:
    version, colon, body = sealed.partition(":")
    if not colon or version != SEAL_VERSION:
        raise LinkUnsealable("not a sealed link")
    try:
        raw = base64.urlsafe_b64decode(body.encode("ascii"))
        return AESGCM(keys.at_rest).decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:],
                                            _context(message_id)).decode()
    except (InvalidTag, ValueError, UnicodeError):
        raise LinkUnsealable("the sealed link does not open with this install's key") from None


def _token(signer: Signer, namespace: str, message_row_id: int) -> str:
    return signer.sign({"m": message_row_id}, namespace)


def _message_of(signer: Signer, namespace: str, token: str, days: int) -> int | None:
    if len(token) > 200:
        return None
    payload: Any = signer.unsign(token, namespace, days * SECONDS_PER_DAY)
    if not isinstance(payload, dict) or not isinstance(payload.get("m"), int):
        return None
    value: int = payload["m"]
    return value


def unsubscribe_link(base_url: str, signer: Signer, message_row_id: int) -> str:
    return f"{base_url}{UNSUBSCRIBE_PATH}{_token(signer, UNSUBSCRIBE_NAMESPACE, message_row_id)}"


def cant_make_it_link(base_url: str, signer: Signer, message_row_id: int) -> str:
    return (f"{base_url}{CANT_MAKE_IT_PATH}"
            f"{_token(signer, CANT_MAKE_IT_NAMESPACE, message_row_id)}")


def unsubscribe_message(signer: Signer, token: str, days: int) -> int | None:
    """The outbox row an unsubscribe token names, or None (forged, malformed, too old)."""
    return _message_of(signer, UNSUBSCRIBE_NAMESPACE, token, days)


def cant_make_it_message(signer: Signer, token: str, days: int) -> int | None:
    return _message_of(signer, CANT_MAKE_IT_NAMESPACE, token, days)
