"""Signing keys of the reference server, made or read once at start-up."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import HMACAlgorithm
from jwt.api_jws import PyJWS

ALGORITHMS = ("HS256", "RS256", "ES256", "EdDSA")


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
    (the same secret for HS256, the private and public half of a pair otherwise), and the JWS
    codec that uses them."""

    algorithm: str
    signing_key: Any
    verifying_key: Any
    jws: PyJWS = field(default_factory=PyJWS)

    def encode(self, claims: dict) -> str:
        """Sign ``claims`` as a compact JWT."""
        payload = json.dumps(claims, separators=(",", ":")).encode()
        return self.jws.encode(payload, self.signing_key, algorithm=self.algorithm)

    def decode(self, token: str) -> dict:
        """The claims of ``token`` if its signature holds (``jwt.InvalidTokenError`` otherwise,
        ``ValueError`` for a payload that is not a JSON object). Time claims are not checked:
        expiry is the server policy's to decide."""
        claims = json.loads(self.jws.decode(token, self.verifying_key, algorithms=[self.algorithm]))
        if not isinstance(claims, dict):
            raise ValueError("JWT payload is not an object")
        return claims


def load_keys(algorithm: str, private_key_path: str | Path | None = None) -> SigningKeys:
    """Keys for ``algorithm`` (one of :data:`ALGORITHMS`).

    Without ``private_key_path`` a fresh secret or key pair is generated (RSA 2048, P-256,
    Ed25519). With it, the file is read: raw bytes as the HS256 secret, or an unencrypted PEM
    private key of the matching type. Raises ``ValueError`` naming what does not fit.
    """
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {algorithm!r}; expected one of: {', '.join(ALGORITHMS)}")
    if algorithm == "HS256":
        hmac = _SecretCheckedOnce(Path(private_key_path).read_bytes() if private_key_path else secrets.token_bytes(32))
        jws = PyJWS(algorithms=["HS256"])
        jws.unregister_algorithm("HS256")
        jws.register_algorithm("HS256", hmac)
        return SigningKeys(algorithm, hmac.secret, hmac.secret, jws)
    key_type, generate = _KEY_PAIRS[algorithm]
    if private_key_path is None:
        private = generate()
    else:
        private = serialization.load_pem_private_key(Path(private_key_path).read_bytes(), password=None)
        if not isinstance(private, key_type) or (
            algorithm == "ES256" and not isinstance(private.curve, ec.SECP256R1)
        ):
            raise ValueError(f"{private_key_path}: expected {_KEY_NAMES[algorithm]} private key for {algorithm}")
    return SigningKeys(algorithm, private, private.public_key())


_KEY_NAMES = {"RS256": "an RSA", "ES256": "a P-256 (secp256r1)", "EdDSA": "an Ed25519"}
_KEY_PAIRS = {
    "RS256": (rsa.RSAPrivateKey, lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)),
    "ES256": (ec.EllipticCurvePrivateKey, lambda: ec.generate_private_key(ec.SECP256R1())),
    "EdDSA": (ed25519.Ed25519PrivateKey, ed25519.Ed25519PrivateKey.generate),
}
