"""Reading a refusal: an expiry 401 from an invalid one, a refused refresh for reuse from one for
expiry or revocation. The profile's patterns first (:class:`~loadtests.targets.profile.Classify`),
then, with ``fallback``, what the client itself knows: the ``exp`` of the token it sent, whether
it already saw the presented refresh token rotated, and that token's known lifetime.
"""

from __future__ import annotations

import re

from loadtests.targets.profile import Classify

#: how much earlier than the client's own estimate a token may expire at the server: servers
#: stamp ``iat``/``exp`` in whole seconds (oidc-provider: ``exp = floor(now) + ttl``), while the
#: client counts ``expires_in`` from when it received the answer. A refusal that said nothing
#: usable, for a token inside its last second by the client's clock, is an expiry
EXPIRY_SLACK_S = 1.0


def _compile(pattern: str | None) -> re.Pattern | None:
    return re.compile(pattern, re.IGNORECASE) if pattern else None


class Classifier:
    """Classifies refusals per a profile's ``classify`` table. Every decision also says how it
    was made (``"server"``: the server's words; ``"client"``: the client's own knowledge)."""

    def __init__(self, spec: Classify) -> None:
        self.spec = spec
        self.expired_access = _compile(spec.expired_access)
        self.invalid_access = _compile(spec.invalid_access)
        self.reuse = _compile(spec.refresh_reuse)
        self.refresh_expired = _compile(spec.refresh_expired)
        self.revoked = _compile(spec.refresh_revoked)
        self.unauthenticated = _compile(spec.refresh_unauthenticated)

    def access(self, words: str | None, expires_unix_s: float, now_unix_s: float) -> tuple[str, str]:
        """``("expired" | "invalid", how)`` for a rejected API call whose refusal said ``words``,
        made with a token the client believes expires at ``expires_unix_s``."""
        words = words or ""
        if self.invalid_access and self.invalid_access.search(words):
            return "invalid", "server"
        if self.expired_access and self.expired_access.search(words):
            return "expired", "server"
        if self.spec.fallback and now_unix_s >= expires_unix_s - EXPIRY_SLACK_S:
            return "expired", "client"
        return "invalid", "server" if words else "client"

    def refresh(self, words: str | None, rotated: bool, expires_unix_s: float, now_unix_s: float) -> tuple[str, str]:
        """``("reuse_detected" | "expired" | "unauthenticated" | "revoked", how)`` for a refused refresh whose
        refusal said ``words``; ``rotated``: the client had already seen the presented refresh
        token exchanged for a newer one; ``expires_unix_s``: its known expiry."""
        words = words or ""
        if self.reuse and self.reuse.search(words):
            return "reuse_detected", "server"
        if self.refresh_expired and self.refresh_expired.search(words):
            return "expired", "server"
        if self.unauthenticated and self.unauthenticated.search(words):
            return "unauthenticated", "server"
        if self.revoked and self.revoked.search(words):
            return "revoked", "server"
        if self.spec.fallback:
            if rotated:
                return "reuse_detected", "client"
            if now_unix_s >= expires_unix_s:
                return "expired", "client"
        return "revoked", "server" if words else "client"
