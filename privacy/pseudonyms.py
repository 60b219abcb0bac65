"""HMAC-SHA256 pseudonyms: stable for the same key and value (so ids still join), meaningless without the key."""
from __future__ import annotations

import hashlib
import hmac


def pseudonym(key: bytes, kind: str, value: str) -> str:
    """`kind`-prefixed pseudonym of `value`, e.g. pseudonym(k, "u", "mia_li_3668") → "u_3f9c…"."""
    digest = hmac.new(key, f"{kind}:{value}".encode(), hashlib.sha256).hexdigest()
    return f"{kind}_{digest[:24]}"
