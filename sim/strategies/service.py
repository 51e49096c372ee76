"""How long the auth tier works on a call, written once for every driver.

A login costs ``login_time`` plus one ``sign_time`` per token it mints; a refresh costs
``refresh_time`` plus one ``verify_time`` (the presented refresh token) plus one ``sign_time`` per
token it mints. Each part is a scenario distribution (a constant by default) and each signature
is drawn on its own. The rule lives here, without randomness of its own: a driver hands in
``draw(part)``, which returns one draw (seconds, at least 0) of the named part's distribution from
the driver's randomness — the simulator's per-user streams, the reference server's generator.
"""

from __future__ import annotations

from typing import Callable

from sim.distributions import Constant

#: the parts of a call's service time, as the ``[auth]`` table names them
PARTS = ("login_time", "refresh_time", "sign_time", "verify_time")

Draw = Callable[[str], float]


class ServiceTimes:
    """Service times of the auth tier's calls under one server policy.

    ``auth`` is the scenario's ``[auth]`` table (:class:`sim.scenario.AuthTier`), ``policy`` the
    variant's server policy (how many tokens a login and a refresh mint). When every part is a
    constant, :attr:`constant` is true and the methods return the same number without calling
    ``draw`` (a driver then needs no randomness for them)."""

    def __init__(self, auth, policy) -> None:
        self.dists = {part: getattr(auth, part) for part in PARTS}
        self.login_mints = policy.mints_per_login()
        self.refresh_mints = policy.mints_per_refresh()
        self.constant = all(isinstance(d, Constant) for d in self.dists.values())
        self.login_mean_s = auth.login_time_s + auth.sign_time_s * self.login_mints
        self.refresh_mean_s = auth.refresh_time_s + auth.verify_time_s + auth.sign_time_s * self.refresh_mints

    def login_s(self, draw: Draw) -> float:
        """Seconds of work for one login."""
        if self.constant:
            return self.login_mean_s
        return draw("login_time") + self.signs_s(self.login_mints, draw)

    def refresh_s(self, draw: Draw) -> float:
        """Seconds of work for one refresh call."""
        if self.constant:
            return self.refresh_mean_s
        return draw("refresh_time") + draw("verify_time") + self.signs_s(self.refresh_mints, draw)

    def part_s(self, part: str, draw: Draw) -> float:
        """Seconds of one part (``login_time``, …) alone, for a driver that spends a call's
        parts at different moments."""
        dist = self.dists[part]
        return dist.value if isinstance(dist, Constant) else draw(part)

    def signs_s(self, n: int, draw: Draw) -> float:
        """Seconds for ``n`` signatures, each drawn on its own."""
        dist = self.dists["sign_time"]
        if isinstance(dist, Constant):
            return dist.value * n
        total = 0.0
        for _ in range(n):
            total += draw("sign_time")
        return total
