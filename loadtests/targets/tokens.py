"""Reading tokens the way a client can: a JWT's claims unverified, or an opaque string.

What the measurement needs of a token is an identity (``jti``, or a hash of the string when the
token is opaque or carries no ``jti``), an expiry in scenario time (``exp``, refined by
``expires_in``; for opaque tokens ``expires_in`` or the profile's ``access_ttl``) and, when the
server says, the session (``sid``).
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import jwt

from sim.strategies.client import Held


def token_hash(raw: str) -> str:
    """The identity of a token the client cannot read: a short hash of its string."""
    return "h:" + hashlib.blake2b(raw.encode(), digest_size=9).hexdigest()


def claims_of(raw: str) -> dict | None:
    """The claims of a JWT without verifying it; None when ``raw`` is not a JWT."""
    if raw.count(".") != 2:
        return None
    try:
        claims = jwt.decode(raw, options={"verify_signature": False})
    except jwt.InvalidTokenError:
        return None
    return claims if isinstance(claims, dict) else None


def token_id(raw: str) -> str:
    """``jti`` of a JWT that has one, otherwise the hash of the string."""
    claims = claims_of(raw)
    jti = claims.get("jti") if claims else None
    return str(jti) if jti is not None else token_hash(raw)


def expires_unix(raw: str, received_unix_s: float, expires_in: Any = None, fmt: str = "jwt",
                 default_ttl_s: float | None = None, time_scale: float = 1.0) -> float:
    """Epoch expiry of a token as the client knows it (inf when nothing says).

    ``exp`` is whole seconds, up to one second earlier than the server's own expiry; when the
    answer also said ``expires_in`` and it agrees with ``exp`` to the second, the finer value is
    used (what OAuth clients do with ``expires_in``). ``default_ttl_s`` is scenario seconds."""
    claims = claims_of(raw) if fmt == "jwt" else None
    exp = claims.get("exp") if claims else None
    expires = float(exp) if isinstance(exp, (int, float)) else math.inf
    finer = math.nan
    if expires_in is not None:
        try:
            finer = received_unix_s + float(expires_in)
        except (TypeError, ValueError):
            finer = math.nan
    if finer == finer and (exp is None or expires <= finer < expires + 1.0):
        return finer
    if exp is None and default_ttl_s is not None:
        return received_unix_s + default_ttl_s / time_scale
    return expires


def held_of(raw: str, expires_at_s: float) -> tuple[Held, str | None]:
    """What the policy sees of a token (id, scenario expiry) and its ``sid`` claim, if any."""
    claims = claims_of(raw)
    sid = claims.get("sid") if claims else None
    return Held(token_id(raw), expires_at_s), None if sid is None else str(sid)
