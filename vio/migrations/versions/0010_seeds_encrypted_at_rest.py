"""second-factor seeds encrypted under a key derived from the install's secret

Each clear TOTP seed in ``staff_users.totp_secret`` is sealed as ``vio.security.seal_totp_seed``
seals it: ``v1:`` and URL-safe base64 of a 96-bit nonce and the AES-256-GCM ciphertext and tag,
under the install's at-rest key, with the staff id as associated data. The downgrade opens them
again. Both need the install's keys (``vio migrate`` passes them) and refuse without them.

The column widens to hold the sealed form on PostgreSQL; SQLite does not enforce a VARCHAR's
length, and rebuilding ``staff_users`` there would trip the foreign keys that point at it.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import base64
import os
from typing import Any

import sqlalchemy as sa
from alembic import context, op
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

revision = "0010"
down_revision = "0009"

VERSION = "v1"
NONCE_BYTES = 12
CLEAR_LENGTH = 64
SEALED_LENGTH = 200


def _key() -> bytes:
    keys: Any = context.config.attributes.get("keys")
    key = getattr(keys, "at_rest", None)
    if not isinstance(key, bytes):
        raise RuntimeError(
            "migration 0010 encrypts second-factor seeds with the install's key and needs it: "
            "run migrations with `vio migrate` (or `vio serve`), with VIO_SECRET_KEY set or "
            "the data folder's secret.key in place")
    return key


def _context(staff_id: int) -> bytes:
    return f"vio totp seed|staff:{staff_id}".encode()


def _seal(key: bytes, staff_id: int, seed: str) -> str:
    nonce = os.urandom(NONCE_BYTES)
    sealed = AESGCM(key).encrypt(nonce, seed.encode(), _context(staff_id))
    return f"{VERSION}:{base64.urlsafe_b64encode(nonce + sealed).decode()}"


def _open(key: bytes, staff_id: int, sealed: str) -> str:
    try:
        raw = base64.urlsafe_b64decode(sealed[len(VERSION) + 1:].encode("ascii"))
        return AESGCM(key).decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:],
                                   _context(staff_id)).decode("ascii")
    except (InvalidTag, ValueError):
        raise RuntimeError(
            f"the second-factor seed of staff {staff_id} does not open with this install's "
            "key: downgrade with the VIO_SECRET_KEY it was sealed under") from None


def _seeds() -> list[Any]:
    return list(op.get_bind().execute(sa.text(
        "SELECT id, totp_secret FROM staff_users WHERE totp_secret IS NOT NULL ORDER BY id")))


def _store(staff_id: int, value: str) -> None:
    op.get_bind().execute(sa.text("UPDATE staff_users SET totp_secret = :value WHERE id = :id"),
                          {"value": value, "id": staff_id})


def _column_length(length: int, was: int) -> None:
    if op.get_bind().dialect.name != "sqlite":
        op.alter_column("staff_users", "totp_secret", type_=sa.String(length),
                        existing_type=sa.String(was), existing_nullable=True)


def upgrade() -> None:
    key = _key()
    _column_length(SEALED_LENGTH, CLEAR_LENGTH)
    for row in _seeds():
        if not row.totp_secret.startswith(f"{VERSION}:"):  # base32 has no colon
            _store(row.id, _seal(key, row.id, row.totp_secret))


def downgrade() -> None:
    key = _key()
    for row in _seeds():
        if row.totp_secret.startswith(f"{VERSION}:"):
            _store(row.id, _open(key, row.id, row.totp_secret))
    _column_length(CLEAR_LENGTH, SEALED_LENGTH)
