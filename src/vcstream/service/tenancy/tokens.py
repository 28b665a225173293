"""Access tokens: what a tenant's backend gets for its API key at ``POST /api/tokens`` and hands to a
browser, which sends it in the signalling ``hello`` (and as a Bearer token to the REST API). A token is
an HS256 JWT (PyJWT) signed with the secret every replica shares (``VCSTREAM_TOKEN_SECRET``): any
replica can check it without the database, and it cannot be revoked, so it lives minutes, not days.

Claims: ``sub`` the tenant id, ``voices`` the voice ids it may use (absent: all the tenant's),
``manage`` whether it may add and delete voices, ``iat``/``exp``, and ``jti`` a random id."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

import jwt

ISSUER = "vcstream"
_ALGORITHM = "HS256"
#: the longest a token may live; a browser gets a new one from its backend
MAX_TTL_S = 3600
DEFAULT_TTL_S = 600
#: clocks of replicas and backends may differ this much
_LEEWAY_S = 5


class InvalidTokenError(ValueError):
    """Expired, forged, malformed or for another issuer; the message says which, never the token."""


@dataclass(frozen=True)
class TokenGrant:
    tenant_id: str
    #: None: every voice of the tenant
    voices: frozenset[str] | None
    may_manage_voices: bool
    expires_at: float


def mint(secret: str, grant: TokenGrant) -> str:
    claims: dict[str, object] = {
        "iss": ISSUER,
        "sub": grant.tenant_id,
        "iat": int(time.time()),
        "exp": int(grant.expires_at),
        "jti": secrets.token_hex(8),
        "manage": grant.may_manage_voices,
    }
    if grant.voices is not None:
        claims["voices"] = sorted(grant.voices)
    return jwt.encode(claims, secret, algorithm=_ALGORITHM)


def verify(secret: str, token: str) -> TokenGrant:
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[_ALGORITHM],  # never "none", never one the token names
            issuer=ISSUER,
            leeway=_LEEWAY_S,
            options={"require": ["exp", "iat", "sub", "iss"]},
        )
    except jwt.ExpiredSignatureError:
        raise InvalidTokenError("the access token has expired") from None
    except jwt.InvalidTokenError as exc:
        raise InvalidTokenError(f"the access token is not valid ({type(exc).__name__})") from None
    voices = claims.get("voices")
    if voices is not None and not (isinstance(voices, list) and all(isinstance(v, str) for v in voices)):
        raise InvalidTokenError("the access token is not valid (voices)")
    if not isinstance(claims["sub"], str):
        raise InvalidTokenError("the access token is not valid (sub)")
    return TokenGrant(
        tenant_id=claims["sub"],
        voices=None if voices is None else frozenset(voices),
        may_manage_voices=bool(claims.get("manage", False)),
        expires_at=float(claims["exp"]),
    )
