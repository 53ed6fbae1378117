"""Keys derived from the install's secret (``VIO_SECRET_KEY``), never stored in the database.

Whoever can write the database still cannot forge what these keys seal or read what they
encrypt, so long as the secret stays off the database (it lives in the environment, or in the
data folder's ``secret.key``, which backups do not include).

- ``audit``: the HMAC-SHA256 key of the audit chain (``vio.audit_chain.audit_digest``).
- ``at_rest``: the key of secrets kept at rest in the database (second-factor seeds).
- ``cluster``: the HMAC-SHA256 key of every message between nodes over Redis
  (``vio.nodes.wire``).

Each is HKDF-SHA256 of the secret with its own purpose label, so one key says nothing of the
other. A database session carries the keys of the install that opened it (``keys_of``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KEY_BYTES = 32
AUDIT_PURPOSE = b"vio audit chain v1"
AT_REST_PURPOSE = b"vio secrets at rest v1"
CLUSTER_PURPOSE = b"vio cluster messages v1"


def _derive(secret_key: str, purpose: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None,
                info=purpose).derive(secret_key.encode())


@dataclass(frozen=True)
class InstallKeys:
    """The install's derived keys. Never printed: the repr shows no key material."""

    audit: bytes = field(repr=False)
    at_rest: bytes = field(repr=False)
    cluster: bytes = field(repr=False)

    @classmethod
    def derive(cls, secret_key: str) -> InstallKeys:
        if not secret_key:
            raise ValueError("the install's secret key is empty")
        return cls(audit=_derive(secret_key, AUDIT_PURPOSE),
                   at_rest=_derive(secret_key, AT_REST_PURPOSE),
                   cluster=_derive(secret_key, CLUSTER_PURPOSE))
