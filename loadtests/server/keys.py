"""Signing keys of the reference server, made or read and checked once at start-up, and the
JWT codec that signs and verifies with them (RFC 8725: one allowed algorithm per server, every
registered claim required and verified)."""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import HMACAlgorithm
from jwt.api_jws import PyJWS

#: the algorithms a server may be configured with; a server accepts exactly one of them
ALGORITHMS = ("HS256", "RS256", "ES256", "EdDSA")
#: RFC 7518 §3.2: an HMAC key at least as long as the hash output (SHA-256: 32 bytes)
HMAC_MIN_BYTES = 32
#: RFC 7518 §3.3: RSA keys of 2048 bits or more
RSA_MIN_BITS = 2048
#: claims every token carries and every verification requires (RFC 7519 §4.1, RFC 8725 §3.8-3.10)
REQUIRED_CLAIMS = ("iss", "aud", "sub", "exp", "iat", "nbf", "jti")


class _SecretCheckedOnce(HMACAlgorithm):
    """HMAC-SHA256 whose secret is validated once, at start-up. PyJWT validates an HMAC secret
    again on every call (PEM, SSH, DER and JWK look-alike checks), which costs more than the
    signature itself; the secret does not change while the server runs."""

    def __init__(self, secret: bytes) -> None:
        super().__init__(HMACAlgorithm.SHA256)
        self.secret = super().prepare_key(secret)

    def prepare_key(self, key):
        return key if key is self.secret else super().prepare_key(key)


@dataclass(frozen=True, slots=True)
class SigningKeys:
    """An algorithm name as PyJWT spells it, the key that signs and the key that verifies
    (the same secret for HS256, the private and public half of a pair otherwise), and the JWT
    codec restricted to that one algorithm."""

    algorithm: str
    signing_key: Any
    verifying_key: Any
    codec: jwt.PyJWT

    def encode(self, claims: dict) -> str:
        """Sign ``claims`` as a compact JWT (header: ``alg`` and ``typ: JWT`` only — no ``kid``,
        ``jku`` or ``x5u`` a verifier could be tempted to follow)."""
        return self.codec.encode(claims, self.signing_key, algorithm=self.algorithm)

    def decode(self, token: str, *, issuer: str, audience: str, now_unix_s: float, leeway_s: float) -> dict:
        """The claims of ``token`` if its signature, algorithm, issuer, audience and time claims
        hold at epoch time ``now_unix_s`` (``exp``, ``nbf`` and ``iat`` with ``leeway_s`` wall
        seconds; see :func:`check_time_claims`); ``jwt.InvalidTokenError`` otherwise
        (``jwt.ExpiredSignatureError`` for a genuine token past its ``exp``).

        PyJWT reads the system clock for its own time checks; they are turned off here so that
        the server's clock (a scaled or a test clock) is the one that decides."""
        claims = self._verified(token, issuer, audience)
        if check_time_claims(claims, now_unix_s, leeway_s):
            raise jwt.ExpiredSignatureError("Signature has expired")
        return claims

    def decode_allowing_expired(self, token: str, *, issuer: str, audience: str, now_unix_s: float,
                                leeway_s: float) -> tuple[dict, bool]:
        """As :meth:`decode`, but a genuine token past its ``exp`` is returned too: (claims,
        whether it has expired). One signature check either way."""
        claims = self._verified(token, issuer, audience)
        return claims, check_time_claims(claims, now_unix_s, leeway_s)

    def _verified(self, token: str, issuer: str, audience: str) -> dict:
        return self.codec.decode(
            token, self.verifying_key, algorithms=[self.algorithm], issuer=issuer, audience=audience,
            options={"require": list(REQUIRED_CLAIMS), "strict_aud": True,
                     "verify_exp": False, "verify_nbf": False, "verify_iat": False},
        )

    def export(self) -> bytes:
        """The signing key as bytes :func:`load_keys` reads back (the secret, or a PKCS#8 PEM)."""
        if self.algorithm == "HS256":
            return self.signing_key
        return self.signing_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption())


def _numeric_date(claims: dict, name: str) -> float:
    value = claims[name]
    # RFC 7519 section 2: a NumericDate is a JSON number (PyJWT would also take "123" as a string)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise jwt.DecodeError(f"the {name} claim must be a number (NumericDate)")
    return float(value)


def check_time_claims(claims: dict, now_unix_s: float, leeway_s: float) -> bool:
    """PyJWT's ``iat`` / ``nbf`` / ``exp`` rules, at ``now_unix_s`` instead of the system clock:
    ``jwt.ImmatureSignatureError`` when ``iat`` or ``nbf`` is after ``now + leeway``,
    ``jwt.DecodeError`` when one of them is not a number; returns whether the token has expired
    (``exp <= now - leeway``)."""
    iat, nbf, exp = (_numeric_date(claims, name) for name in ("iat", "nbf", "exp"))
    if iat > now_unix_s + leeway_s:
        raise jwt.ImmatureSignatureError("The token is not yet valid (iat)")
    if nbf > now_unix_s + leeway_s:
        raise jwt.ImmatureSignatureError("The token is not yet valid (nbf)")
    return exp <= now_unix_s - leeway_s


def _codec(hmac: _SecretCheckedOnce | None) -> jwt.PyJWT:
    codec = jwt.PyJWT(options={"enforce_minimum_key_length": True})
    jws = getattr(codec, "_jws", None)
    if hmac is not None and isinstance(jws, PyJWS):
        jws.unregister_algorithm("HS256")
        jws.register_algorithm("HS256", hmac)
    return codec


def generate_key(algorithm: str) -> bytes:
    """A fresh secret (32 random bytes) or private key (RSA 2048, P-256, Ed25519) as bytes."""
    check_algorithm(algorithm)
    if algorithm == "HS256":
        return secrets.token_bytes(HMAC_MIN_BYTES)
    return _KEY_PAIRS[algorithm][1]().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def check_algorithm(algorithm: str) -> None:
    """``ValueError`` unless ``algorithm`` is on the allowlist."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {algorithm!r}; expected one of: {', '.join(ALGORITHMS)}")


def load_keys(algorithm: str, private_key_path: str | Path | None = None, *, key_bytes: bytes | None = None) -> SigningKeys:
    """Keys for ``algorithm`` (one of :data:`ALGORITHMS`).

    Without ``private_key_path`` or ``key_bytes`` a fresh secret or key pair is generated. With
    either, the bytes are read: raw bytes as the HS256 secret (at least :data:`HMAC_MIN_BYTES`),
    or an unencrypted PEM private key of the matching type (RSA of at least :data:`RSA_MIN_BITS`
    bits, P-256, Ed25519). Raises ``ValueError`` naming the file and what does not fit.
    """
    check_algorithm(algorithm)
    source = str(private_key_path) if private_key_path else "the key"
    if private_key_path is not None:
        key_bytes = Path(private_key_path).read_bytes()
    if key_bytes is None:
        key_bytes = generate_key(algorithm)
    if algorithm == "HS256":
        if not key_bytes:
            raise ValueError(f"{source}: the HS256 secret is empty")
        if len(key_bytes) < HMAC_MIN_BYTES:
            raise ValueError(f"{source}: an HS256 secret needs at least {HMAC_MIN_BYTES} bytes "
                             f"(RFC 7518 section 3.2), this one has {len(key_bytes)}")
        hmac = _SecretCheckedOnce(key_bytes)
        return SigningKeys(algorithm, hmac.secret, hmac.secret, _codec(hmac))
    key_type = _KEY_PAIRS[algorithm][0]
    if not key_bytes.strip():
        raise ValueError(f"{source}: the private key file is empty")
    try:
        private = serialization.load_pem_private_key(key_bytes, password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{source}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(private, key_type) or (algorithm == "ES256" and not isinstance(private.curve, ec.SECP256R1)):
        raise ValueError(f"{source}: expected {_KEY_NAMES[algorithm]} private key for {algorithm}")
    if algorithm == "RS256" and private.key_size < RSA_MIN_BITS:
        raise ValueError(f"{source}: an RS256 key needs at least {RSA_MIN_BITS} bits "
                         f"(RFC 7518 section 3.3), this one has {private.key_size}")
    return SigningKeys(algorithm, private, private.public_key(), _codec(None))


_KEY_NAMES = {"RS256": "an RSA", "ES256": "a P-256 (secp256r1)", "EdDSA": "an Ed25519"}
_KEY_PAIRS = {
    "RS256": (rsa.RSAPrivateKey, lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)),
    "ES256": (ec.EllipticCurvePrivateKey, lambda: ec.generate_private_key(ec.SECP256R1())),
    "EdDSA": (ed25519.Ed25519PrivateKey, ed25519.Ed25519PrivateKey.generate),
}
