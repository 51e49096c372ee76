"""Signing keys of the reference server, made or read once at start-up."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

ALGORITHMS = ("HS256", "RS256", "ES256", "EdDSA")


@dataclass(frozen=True, slots=True)
class SigningKeys:
    """An algorithm name as PyJWT spells it, the key that signs and the key that verifies
    (the same secret for HS256, the private and public half of a pair otherwise)."""

    algorithm: str
    signing_key: Any
    verifying_key: Any


def load_keys(algorithm: str, private_key_path: str | Path | None = None) -> SigningKeys:
    """Keys for ``algorithm`` (one of :data:`ALGORITHMS`).

    Without ``private_key_path`` a fresh secret or key pair is generated (RSA 2048, P-256,
    Ed25519). With it, the file is read: raw bytes as the HS256 secret, or an unencrypted PEM
    private key of the matching type. Raises ``ValueError`` naming what does not fit.
    """
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {algorithm!r}; expected one of: {', '.join(ALGORITHMS)}")
    if algorithm == "HS256":
        secret = Path(private_key_path).read_bytes() if private_key_path else secrets.token_bytes(32)
        return SigningKeys(algorithm, secret, secret)
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
