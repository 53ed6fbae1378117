"""Passwords, signed tokens, CSRF tokens, second-factor codes and the sign-in attempt counter.

- Passwords are argon2 hashes, checked in a small pool of worker threads
  (``verify_password_off_loop``): the event loop, and the media it forwards, never waits for a
  hash, and the pool is kept to half the cores so sign-in storms leave the rest to the server.
- Each signed token has its own namespace (salt) and always a maximum age.
- Second factor: TOTP (RFC 6238, 30-second steps, six digits) from an authenticator app; a
  code is accepted once (the last accepted step is kept) and one step either side of now.
  The seed is kept sealed (``seal_totp_seed``): AES-256-GCM under the install's at-rest key
  (``InstallKeys.at_rest``), the staff id as associated data, so a copy of the database reads
  no seed and a seed moved to another account no longer opens.
- ``AttemptCounter`` counts sign-in tries per key (address and email) in the database, checking
  and counting in one statement, so concurrent guesses from any number of processes get exactly
  the allowed number of tries before the rest are refused unread.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import secrets
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any, overload

import pyotp
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlalchemy import CursorResult, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from vio.clock import Clock
from vio.db import keys_of
from vio.keys import InstallKeys
from vio.models import SignInAttempts, StaffUser

_hasher = PasswordHasher()
PASSWORD_WORKERS = max(1, (os.cpu_count() or 2) // 2)
_password_pool = ThreadPoolExecutor(max_workers=PASSWORD_WORKERS,
                                    thread_name_prefix="vio-password")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


async def verify_password_off_loop(password_hash: str, password: str) -> bool:
    """``verify_password`` in the password pool, so the event loop goes on meanwhile."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_password_pool, verify_password, password_hash, password)


async def hash_password_off_loop(password: str) -> str:
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_password_pool, hash_password, password)


# A valid hash to verify against when the email is unknown, so both paths cost the same.
DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


def new_secret() -> str:
    """A random secret of 256 bits for links and invites."""
    return secrets.token_urlsafe(32)


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def same_secret(stored_hash: str, secret: str) -> bool:
    return hmac.compare_digest(stored_hash, secret_hash(secret))


class Signer:
    """Signs small payloads with a namespace per purpose; every token has a maximum age."""

    def __init__(self, secret_key: str) -> None:
        self._secret_key = secret_key

    def sign(self, payload: Any, namespace: str) -> str:
        return URLSafeTimedSerializer(self._secret_key, salt=namespace).dumps(payload)

    def unsign(self, token: str, namespace: str, max_age_seconds: int) -> Any:
        """The payload, or ``None`` for a token that is forged, malformed or too old."""
        try:
            return URLSafeTimedSerializer(self._secret_key, salt=namespace).loads(
                token, max_age=max_age_seconds)
        except (BadSignature, UnicodeError, ValueError):
            return None


def new_csrf_token() -> str:
    return secrets.token_urlsafe(24)


def csrf_ok(expected: str | None, given: object) -> bool:
    return (isinstance(expected, str) and isinstance(given, str) and bool(expected)
            and expected.isascii() and given.isascii()
            and hmac.compare_digest(expected, given))


# --- second factor ----------------------------------------------------------------------------

TOTP_STEP_SECONDS = 30
TOTP_DIGITS = 6
TOTP_DRIFT_STEPS = 1
TOTP_ISSUER = "vio"


def new_totp_secret() -> str:
    return pyotp.random_base32()


# A sealed seed: "v1:" and URL-safe base64 of a 96-bit nonce followed by the AES-GCM ciphertext
# and tag. Migration 0010 writes the same form.
SEALED_SEED_VERSION = "v1"
SEALED_SEED_NONCE_BYTES = 12


class SeedUnreadable(ValueError):
    """A sealed seed this install cannot open: sealed under another secret key, for another
    staff member, or damaged."""


def _seed_context(staff_id: int) -> bytes:
    """The associated data that binds a sealed seed to one staff account."""
    return f"vio totp seed|staff:{staff_id}".encode()


def seal_totp_seed(keys: InstallKeys, staff_id: int, seed: str) -> str:
    """The form ``StaffUser.totp_secret`` keeps: ``seed`` encrypted for ``staff_id`` only."""
    nonce = os.urandom(SEALED_SEED_NONCE_BYTES)
    sealed = AESGCM(keys.at_rest).encrypt(nonce, seed.encode(), _seed_context(staff_id))
    return f"{SEALED_SEED_VERSION}:{base64.urlsafe_b64encode(nonce + sealed).decode()}"


@overload
def open_totp_seed(keys: InstallKeys, staff_id: int, sealed: str) -> str: ...
@overload
def open_totp_seed(keys: InstallKeys, staff_id: int, sealed: None) -> None: ...
def open_totp_seed(keys: InstallKeys, staff_id: int, sealed: str | None) -> str | None:
    """The seed ``seal_totp_seed`` sealed for ``staff_id`` (None when there is none); raises
    ``SeedUnreadable`` for anything else."""
    if sealed is None:
        return None
    version, colon, body = sealed.partition(":")
    if not colon or version != SEALED_SEED_VERSION:
        raise SeedUnreadable(f"staff {staff_id}: the second-factor seed is not a sealed "
                             f"{SEALED_SEED_VERSION} seed")
    try:
        raw = base64.urlsafe_b64decode(body.encode("ascii"))
        seed = AESGCM(keys.at_rest).decrypt(raw[:SEALED_SEED_NONCE_BYTES],
                                            raw[SEALED_SEED_NONCE_BYTES:],
                                            _seed_context(staff_id))
        return seed.decode("ascii")
    except (InvalidTag, ValueError):  # binascii and Unicode errors are ValueErrors
        raise SeedUnreadable(
            f"staff {staff_id}: the second-factor seed does not open with this install's key "
            "(VIO_SECRET_KEY or secret.key other than the one it was sealed with, or a seed "
            "moved from another account)") from None


# What a person whose seed no longer opens (VIO_SECRET_KEY changed without ``vio audit
# reseal``) is told, on the sign-in step and their account page.
SEED_UNREADABLE = ("Your authenticator app can't be checked on this server any more. Ask an "
                   "admin of your program to reset your second factor; then set it up again.")


async def reseal_totp_seeds(db: AsyncSession, old: InstallKeys) -> int:
    """After ``VIO_SECRET_KEY`` changed: seal each seed sealed under ``old`` again under the
    session's keys (``keys_of``), in the caller's transaction; returns how many. A seed that
    opens under neither raises ``SeedUnreadable``, and the caller rolls back."""
    new = keys_of(db)
    resealed = 0
    for staff in (await db.execute(select(StaffUser).where(
            StaffUser.totp_secret.is_not(None)).order_by(StaffUser.id))).scalars():
        assert staff.totp_secret is not None
        try:
            open_totp_seed(new, staff.id, staff.totp_secret)
        except SeedUnreadable:
            seed = open_totp_seed(old, staff.id, staff.totp_secret)
            staff.totp_secret = seal_totp_seed(new, staff.id, seed)
            resealed += 1
    await db.flush()
    return resealed


def totp_uri(secret: str, account: str) -> str:
    """The ``otpauth://`` address an authenticator app reads (as a QR code or typed in)."""
    return pyotp.TOTP(secret).provisioning_uri(name=account, issuer_name=TOTP_ISSUER)


def totp_code(secret: str, at: datetime) -> str:
    return pyotp.TOTP(secret).at(at)


def totp_accepts(secret: str, code: object, now: datetime,
                 last_step: int | None) -> int | None:
    """The time step ``code`` is good for (now, or one step either side), if it was not used
    before (``last_step``); None when the code is wrong, malformed or already used."""
    if not isinstance(code, str):
        return None
    typed = code.replace(" ", "").strip()
    if len(typed) != TOTP_DIGITS or not typed.isascii() or not typed.isdigit():
        return None
    totp = pyotp.TOTP(secret)
    current = int(now.timestamp()) // TOTP_STEP_SECONDS
    for step in range(current - TOTP_DRIFT_STEPS, current + TOTP_DRIFT_STEPS + 1):
        if last_step is not None and step <= last_step:
            continue
        if hmac.compare_digest(totp.generate_otp(step), typed):
            return step
    return None


# --- attempts ---------------------------------------------------------------------------------

class AttemptCounter:
    """Tries per key in a fixed window, kept in ``sign_in_attempts``; each call commits.

    ``reserve`` is the sign-in check: it counts a try and says whether it may go ahead, in one
    conditional UPDATE (``attempts < max``), so two requests can never both take the last try.
    ``blocked``/``failed`` count failures only, for links whose secret is checked anyway.
    Keys are stored hashed.
    """

    def __init__(self, db: async_sessionmaker[AsyncSession], clock: Clock,
                 max_failures: int, window_seconds: float, namespace: str) -> None:
        self.db = db
        self.clock = clock
        self.max_failures = max_failures
        self.window = timedelta(seconds=window_seconds)
        self.namespace = namespace

    def _key(self, key: str) -> str:
        return secret_hash(f"{self.namespace}|{key}")

    async def _open_window(self, session: AsyncSession, key_hash: str, now: datetime) -> None:
        """Make the key's row exist, and start a new window if the last one is over."""
        dialect = session.get_bind().dialect.name
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        await session.execute(insert(SignInAttempts).values(
            key_hash=key_hash, window_started_at=now, attempts=0).on_conflict_do_nothing())
        await session.execute(update(SignInAttempts).where(
            SignInAttempts.key_hash == key_hash,
            SignInAttempts.window_started_at <= now - self.window,
        ).values(window_started_at=now, attempts=0))

    async def reserve(self, key: str) -> bool:
        """Count one try for ``key``; False (nothing counted) once the tries are used up."""
        now = self.clock.now()
        key_hash = self._key(key)
        async with self.db() as session:
            await self._open_window(session, key_hash, now)
            result = await session.execute(update(SignInAttempts).where(
                SignInAttempts.key_hash == key_hash,
                SignInAttempts.attempts < self.max_failures,
            ).values(attempts=SignInAttempts.attempts + 1))
            await session.commit()
        assert isinstance(result, CursorResult)
        return result.rowcount == 1

    async def blocked(self, key: str) -> bool:
        now = self.clock.now()
        async with self.db() as session:
            found = await session.get(SignInAttempts, self._key(key))
        return (found is not None and found.window_started_at > now - self.window
                and found.attempts >= self.max_failures)

    async def failed(self, key: str) -> None:
        now = self.clock.now()
        key_hash = self._key(key)
        async with self.db() as session:
            await self._open_window(session, key_hash, now)
            await session.execute(update(SignInAttempts).where(
                SignInAttempts.key_hash == key_hash).values(
                attempts=SignInAttempts.attempts + 1))
            await session.commit()

    async def clear(self, key: str) -> None:
        async with self.db() as session:
            found = await session.get(SignInAttempts, self._key(key))
            if found is not None:
                await session.delete(found)
                await session.commit()
