"""API keys: ``vcsk_<id>_<secret>``. The id is public (it names the key in lists and in ``keys
revoke``); the secret is 256 random bits, shown once and stored only as its SHA-256. A slow password
hash is not needed for a secret with that much entropy (nobody can guess it from its hash), and a
check must stay cheap because every REST request makes one."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

PREFIX = "vcsk"
_KEY = re.compile(rf"^{PREFIX}_(?P<id>[0-9a-f]{{16}})_(?P<secret>[A-Za-z0-9_-]{{43}})$")
#: compared against when a key id is unknown, so that an unknown id and a wrong secret take as long
_NOBODY = hashlib.sha256(b"no such key").hexdigest()


@dataclass(frozen=True)
class NewKey:
    id: str
    #: the whole key, to show once
    key: str
    secret_sha256: str


def new_key() -> NewKey:
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)  # 43 characters
    return NewKey(key_id, f"{PREFIX}_{key_id}_{secret}", secret_digest(secret))


def secret_digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_key(text: str) -> tuple[str, str] | None:
    """``(id, secret)`` of something shaped like an API key, else None."""
    match = _KEY.match(text)
    return (match["id"], match["secret"]) if match else None


def looks_like_key(text: str) -> bool:
    return text.startswith(f"{PREFIX}_")


def secret_matches(secret: str, stored_sha256: str | None) -> bool:
    """Constant-time comparison; ``stored_sha256`` None (unknown id) compares against a dummy."""
    expected = stored_sha256 if stored_sha256 is not None else _NOBODY
    return hmac.compare_digest(secret_digest(secret), expected) and stored_sha256 is not None
