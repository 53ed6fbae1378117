"""Passwords, signed tokens, CSRF tokens and the sign-in rate limit.

Each signed token has its own namespace (salt) and always a maximum age.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import defaultdict, deque
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from itsdangerous import BadSignature, URLSafeTimedSerializer

_hasher = PasswordHasher()


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


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
        except BadSignature:
            return None


def new_csrf_token() -> str:
    return secrets.token_urlsafe(24)


def csrf_ok(expected: str | None, given: object) -> bool:
    return (isinstance(expected, str) and isinstance(given, str) and bool(expected)
            and hmac.compare_digest(expected, given))


class LoginThrottle:
    """Counts failed sign-ins per key (address and email) inside a sliding window."""

    def __init__(self, max_failures: int, window_seconds: float) -> None:
        self.max_failures = max_failures
        self.window_seconds = window_seconds
        self._failures: dict[str, deque[float]] = defaultdict(deque)

    def _recent(self, key: str, now: float) -> deque[float]:
        failures = self._failures[key]
        while failures and failures[0] <= now - self.window_seconds:
            failures.popleft()
        return failures

    def blocked(self, key: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        return len(self._recent(key, now)) >= self.max_failures

    def failed(self, key: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._recent(key, now).append(now)

    def succeeded(self, key: str) -> None:
        self._failures.pop(key, None)
