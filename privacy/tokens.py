"""Reversible user references: the raw user id sealed (AES-SIV) with the user's own key, bound to the pseudonym."""
from __future__ import annotations

import base64

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESSIV
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

PREFIX = "ur1."


def _aead(user_key: bytes) -> AESSIV:
    # AES-256-SIV needs 64 bytes; the stored key is 32, so derive (HKDF) rather than store twice as much
    return AESSIV(HKDF(hashes.SHA256(), 64, salt=None, info=b"trajlake user_ref v1").derive(user_key))


def seal(user_key: bytes, pseudonym: str, raw_user_id: str) -> str:
    """`ur1.<base64url>`: deterministic (SIV), so a replayed event gets the same token and ingest stays
    deterministic; bound to `pseudonym`, so a token copied onto another user's row does not open."""
    sealed = _aead(user_key).encrypt(raw_user_id.encode(), [pseudonym.encode()])
    return PREFIX + base64.urlsafe_b64encode(sealed).decode().rstrip("=")


def reveal(user_key: bytes, pseudonym: str, token: str) -> str | None:
    """The raw user id, or None when the token was not sealed with this key for this pseudonym."""
    if not token.startswith(PREFIX):
        return None
    body = token[len(PREFIX):]
    try:
        return _aead(user_key).decrypt(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)),
                                       [pseudonym.encode()]).decode()
    except (InvalidTag, ValueError):
        return None
